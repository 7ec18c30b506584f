"""Stage `curate`: raw episodes -> D+ and D± (train/eval split by item) + statistics + data card.

The work is `reflectevo.curation.stage.run_curate`: it streams the shards (peak memory does not grow with
the number of episodes); an episode lacking a field curate needs stops it with one line naming the file,
the row and the field (exit 2), before any output is replaced.

    dvc repro curate
    python stages/curate.py --params params.yaml --raw data/raw --out data/curated

Reads `curate` in params.yaml. An empty D+ is a normal outcome for a tiny model: it is recorded, and
the later stages record "no training data". `curate.judge` ranks fixing reflections into Dpref:
`likelihood` (the generating model's log-probability of the right answer in each fixing retry; offline,
no generation), `self` (the generating model judges each pair in both orders), or a model preset (an
`openai` preset judges through an endpoint, base URL and key from the environment, see
reflectevo/backends/openai_backend.py). The judge is recorded in every Dpref row, `stats.json` and the card.
"""

from __future__ import annotations

from pathlib import Path

import typer

from reflectevo.stage import friendly_errors

app = typer.Typer(add_completion=False)


@app.command()
@friendly_errors
def main(params: Path = Path("params.yaml"), raw: Path = Path("data/raw"), out: Path = Path("data/curated"),
         metrics: Path = Path("metrics/curate.json"),
         headline: Path = typer.Option(None, help="flat DVC metrics file")) -> None:
    from reflectevo.curation.stage import run_curate

    for line in run_curate(params, raw, out, metrics, headline):
        typer.echo(line)


if __name__ == "__main__":
    app()
