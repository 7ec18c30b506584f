"""Stage `evaluate`: Acc@t1 / Acc@t2 / Δ / Δi→c / Δc→i per system and task -> metrics/eval.json.

    dvc repro evaluate
    python stages/evaluate.py --params params.yaml --sources data/sources/test.jsonl --models models

Trial 1 by the base model; for its failures (oracle protocol) each system reflects and retries: the
prompt baselines without and with reflection, and every trained setting found under --models
(settings whose card says "no training data", or that are missing, are listed under `skipped` with
the reason; reflectevo/systems.py). With `evaluate.rounds` R > 1 each reflecting system repeats reflect -> retry on its latest
attempt (Acc@t1 .. Acc@t(R+1)). Per-sample predictions go to data/eval/predictions.jsonl, plot data
(accuracy by round, trial-1 -> final transitions) to plots/eval/. Reads `evaluate` and
`models.<model>` in params.yaml.
"""

from __future__ import annotations

from pathlib import Path

import typer

from reflectevo.config.params import stage_params
from reflectevo.stage import friendly_errors

from reflectevo.tasks.items import load_items

app = typer.Typer(add_completion=False)


@app.command()
@friendly_errors
def main(params: Path = Path("params.yaml"), sources: Path = Path("data/sources/test.jsonl"),
         models: Path = Path("models"), predictions: Path = Path("data/eval/predictions.jsonl"),
         metrics: Path = Path("metrics/eval.json"), plots: Path = Path("plots/eval"),
         headline: Path = typer.Option(None, help="flat DVC metrics file")) -> None:
    from reflectevo.errors import ReflectEvoError
    from reflectevo.models.load import check_available
    from reflectevo.systems import run_evaluation, write_evaluation

    name, preset, cfg = stage_params(params, "evaluate")
    check_available(name, preset)  # an unreachable hub preset: one line, before anything is written
    items, tasks = load_items(sources)
    if cfg.limit:
        items = items[: cfg.limit]
    if not items:
        raise ReflectEvoError(f"{sources}: no test items")
    result = run_evaluation(name, preset, cfg, items, tasks, models)
    for line in write_evaluation(result, metrics, predictions, plots, headline):
        typer.echo(f"evaluate{line}")


if __name__ == "__main__":
    app()
