"""Stage `train@<setting>`: LoRA training of one learning setting -> models/<setting>/ + metrics/train/<setting>.json.

    dvc repro train@one_stage            # or: dvc repro  (every setting of vars.settings in dvc.yaml)
    python stages/train.py --setting two_stage --train-data data/curated/dplus_train.jsonl \\
        --eval-data data/curated/dplus_eval.jsonl --out models/two_stage

Settings: one_stage, two_stage (reflector + corrector), dpo_pm (D±), dpo_pref (Dpref), sft_qa (answers).
Reads `train` and `models.<model>` in params.yaml. Empty data -> the folder holds only a card saying
"no training data", and evaluate reports the setting as skipped.
"""

from __future__ import annotations

from pathlib import Path

import typer

from reflectevo.stage import friendly_errors, stage_params

app = typer.Typer(add_completion=False)


@app.command()
@friendly_errors
def main(setting: str = typer.Option(..., help="one_stage | two_stage | dpo_pm | dpo_pref | sft_qa"),
         params: Path = Path("params.yaml"), train_data: Path = typer.Option(...),
         eval_data: str = typer.Option("none", help="a JSONL file, or 'none'"),
         out: Path = typer.Option(...), metrics: Path = typer.Option(...),
         curves: Path = typer.Option(None, help="dvclive folder for train/eval curves")) -> None:
    from reflectevo.errors import unknown
    from reflectevo.jsonio import read_jsonl, write_json
    from reflectevo.models import model_fingerprint
    from reflectevo.training import SETTINGS, train_setting

    if setting not in SETTINGS:
        raise unknown("training setting", setting, SETTINGS, "--setting")
    name, preset, cfg = stage_params(params, "train")
    train_rows = read_jsonl(train_data)
    eval_rows = [] if eval_data == "none" else read_jsonl(eval_data)
    result = train_setting(setting, name, preset, model_fingerprint(name, preset), train_rows, eval_rows, cfg, out,
                           curves_dir=curves)
    from reflectevo.training import is_main_process

    if not is_main_process():  # under `accelerate launch`, only rank 0 writes
        return
    if curves is not None:  # a declared DVC output: present (empty) even when nothing was trained
        (curves / "plots" / "metrics").mkdir(parents=True, exist_ok=True)
    write_json(metrics, {"model": name, **result})
    typer.echo(f"train[{setting}]: {result}")


if __name__ == "__main__":
    app()
