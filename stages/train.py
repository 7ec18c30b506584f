"""Stage `train`: LoRA SFT on D+ (setting `one_stage`) -> models/<setting>/ + metrics/train.json.

    dvc repro train
    python stages/train.py --params params.yaml --curated data/curated --out models/one_stage

Reads `train` and `models.<model>` in params.yaml. With an empty D+ the adapter folder holds only a
card saying "no training data", and evaluate reports the setting as untrained.
"""

from __future__ import annotations

from pathlib import Path

import typer

from reflectevo.stage import friendly_errors, stage_params

app = typer.Typer(add_completion=False)


@app.command()
@friendly_errors
def main(params: Path = Path("params.yaml"), curated: Path = Path("data/curated"),
         out: Path = Path("models/one_stage"), metrics: Path = Path("metrics/train.json")) -> None:
    import shutil

    from reflectevo.jsonio import read_jsonl, write_json
    from reflectevo.models import model_fingerprint
    from reflectevo.training import train_sft

    name, preset, cfg = stage_params(params, "train")
    train_rows = read_jsonl(curated / "dplus_train.jsonl")
    eval_rows = read_jsonl(curated / "dplus_eval.jsonl")
    if out.exists():
        shutil.rmtree(out)  # never mix files of an earlier adapter into this one
    result = train_sft(name, preset, model_fingerprint(name, preset), train_rows, eval_rows, cfg, out)
    write_json(metrics, {"setting": cfg.setting, "model": name, **result})
    typer.echo(f"train[{cfg.setting}]: {result}")


if __name__ == "__main__":
    app()
