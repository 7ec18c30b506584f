"""Stage `train@<setting>`: LoRA (or full-parameter) training of one learning setting -> models/<setting>/ + metrics/train/<setting>.json.

    dvc repro train@one_stage            # or: dvc repro  (every setting of vars.settings in dvc.yaml)
    python stages/train.py --setting two_stage --train-data data/curated/dplus_train.jsonl \\
        --eval-data data/curated/dplus_eval.jsonl --out models/two_stage

Settings: one_stage, two_stage (reflector + corrector), dpo_pm (D±), dpo_pref (Dpref), sft_qa (answers),
and online RL on the trial-1 attempts in `--train-data data/raw`: grpo_one_stage, grpo_reflect_retry, rloo
(off unless `train.rl.enabled: true`: then their folder holds a "disabled" card). Reads `train` and
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

from reflectevo.stage import friendly_errors, stage_params

app = typer.Typer(add_completion=False)


@app.command()
@friendly_errors
def main(setting: str = typer.Option(..., help="one_stage | two_stage | dpo_pm | dpo_pref | sft_qa | grpo_one_stage | "
                                     "grpo_reflect_retry | rloo"),
         params: Path = Path("params.yaml"), train_data: Path = typer.Option(...),
         eval_data: str = typer.Option("none", help="a JSONL file, or 'none'"),
         out: Path = typer.Option(...), metrics: Path = typer.Option(...),
         curves: Path = typer.Option(None, help="dvclive folder for train/eval curves"),
         checkpoints: str = typer.Option("auto", help="checkpoint folder to resume from: a path, 'auto' "
                                         "(checkpoints/<setting> beside the models folder) or 'none'"),
         headline: Path = typer.Option(None, help="flat DVC metrics file")) -> None:
    from reflectevo.errors import unknown
    from reflectevo.jsonio import write_json
    from reflectevo.models import check_available, model_fingerprint
    from reflectevo.training import RL_SETTINGS, SETTINGS, train_method, train_setting

    if setting not in SETTINGS:
        raise unknown("training setting", setting, SETTINGS, "--setting")
    name, preset, cfg = stage_params(params, "train")
    train_method(name, preset, cfg.method)  # a method the preset cannot do: one line before anything is read
    if setting in RL_SETTINGS:  # prompts from the raw episodes; nothing is read while RL is disabled
        train_rows = _rl_rows(train_data, cfg.rl) if cfg.rl.enabled else []
        eval_rows = []
    else:
        train_rows = _read_rows(train_data, setting)
        eval_rows = [] if eval_data == "none" else _read_rows(Path(eval_data), setting)
    if train_rows:
        check_available(name, preset)  # an unreachable hub preset: one line before any checkpoint is written
    if checkpoints == "none":
        ckpt_dir = None
    elif checkpoints == "auto":
        ckpt_dir = out.parent.parent / "checkpoints" / setting
    else:
        ckpt_dir = Path(checkpoints)
    result = train_setting(setting, name, preset, model_fingerprint(name, preset), train_rows, eval_rows, cfg, out,
                           curves_dir=curves, checkpoint_dir=ckpt_dir)
    from reflectevo.training import is_main_process

    if not is_main_process():  # under `accelerate launch`, only rank 0 writes
        return
    if curves is not None:  # a declared DVC output: present (empty) even when nothing was trained
        (curves / "plots" / "metrics").mkdir(parents=True, exist_ok=True)
    write_json(metrics, {"model": name, **result})
    typer.echo(f"train[{setting}]: {result}")
    if headline is not None:  # full JSON above (plain output), small flat copy here (DVC metric)
        from reflectevo.metrics_summary import train_headline

        write_json(headline, train_headline(result))


def _rl_rows(raw_dir: Path, hp) -> list[dict]:
    """RL prompts from the episodes in `raw_dir` (generate's output): failed trial-1 attempts (oracle) or every
    item (intrinsic). Episodes but no failed attempt -> one line, exit 2; no episodes -> "no training data"."""
    from reflectevo.errors import ReflectEvoError
    from reflectevo.generation import load_episodes
    from reflectevo.training import rl_rows

    if not raw_dir.is_dir():
        raise ReflectEvoError(f"{raw_dir}: no raw episodes folder (run the generate stage: `dvc repro generate`)")
    episodes = load_episodes(raw_dir)
    rows = rl_rows(episodes, hp.protocol, hp.limit)
    if episodes and not rows:
        raise ReflectEvoError(f"{raw_dir}: no failed trial-1 attempts among {len(episodes)} episodes (train.rl.protocol: "
                              "oracle trains on failures only); use train.rl.protocol: intrinsic or generate more items")
    return rows


def _read_rows(path: Path, setting: str) -> list[dict]:
    """The rows of a training file; a malformed or unusable row fails with `file:line: what`."""
    from reflectevo.errors import ReflectEvoError
    from reflectevo.jsonio import read_jsonl
    from reflectevo.training import row_problem

    rows = read_jsonl(path)  # malformed JSON -> file:line
    lines = [i for i, raw in enumerate(path.read_bytes().split(b"\n"), start=1) if raw.strip()]
    for row, line in zip(rows, lines, strict=True):
        problem = row_problem(setting, row)
        if problem:
            raise ReflectEvoError(f"{path}:{line}: {problem} (a {setting} training row)")
    return rows


if __name__ == "__main__":
    app()
