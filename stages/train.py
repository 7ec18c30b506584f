"""Stage `train@<setting>`: LoRA (or full-parameter) training of one learning setting -> models/<setting>/ + metrics/train/<setting>.json.

    dvc repro train@one_stage            # or: dvc repro  (every setting of vars.settings in dvc.yaml)
    python stages/train.py --setting two_stage --train-data data/curated/dplus_train.jsonl \\
        --eval-data data/curated/dplus_eval.jsonl --out models/two_stage

Settings: those of reflectevo/resources/settings.yaml (one_stage, two_stage, dpo_pm, dpo_pref, sft_qa, and
online RL on the trial-1 attempts in `--train-data data/raw`: grpo_one_stage, grpo_reflect_retry, rloo, off
unless `train.rl.enabled: true`: their folder then holds a "disabled" card). Reads `train` and
`models.<model>` in params.yaml. Empty data -> the folder holds only a card saying "no training data", and
evaluate reports the setting as skipped.

Checkpoints (every `train.sft|dpo.save_steps`) go to `--checkpoints` (default `checkpoints/<setting>` beside
the folder holding `--out`, i.e. `checkpoints/<setting>` for `--out models/<setting>`; `none` disables):
outside the DVC output, so a killed run (or `dvc repro` after one) resumes where it stopped. They are
removed after a successful run unless `train.keep_checkpoints: true`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from reflectevo.settings import setting_names
from reflectevo.stage import friendly_errors

app = typer.Typer(add_completion=False)


@app.command()
@friendly_errors
def main(setting: str = typer.Option(..., help=" | ".join(setting_names())),
         params: Path = Path("params.yaml"), train_data: Path = typer.Option(...),
         eval_data: str = typer.Option("none", help="a JSONL file, or 'none'"),
         out: Path = typer.Option(...), metrics: Path = typer.Option(...),
         curves: Path = typer.Option(None, help="dvclive folder for train/eval curves"),
         checkpoints: str = typer.Option("auto", help="checkpoint folder to resume from: a path, 'auto' "
                                         "(checkpoints/<setting> beside the models folder) or 'none'"),
         headline: Path = typer.Option(None, help="flat DVC metrics file")) -> None:
    from reflectevo.training.progress import describe_result
    from reflectevo.training.stage import run_train

    result = run_train(setting, params, train_data, eval_data, out, metrics, curves, checkpoints, headline)
    if result is not None:
        typer.echo(f"train@{describe_result(setting, result)}")


if __name__ == "__main__":
    app()
