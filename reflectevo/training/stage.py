"""The train stage's work (`stages/train.py` and self-evolution's train step call it): read and check the
training rows, train the setting, write its metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reflectevo.errors import ReflectEvoError


def run_train(setting: str, params: Path, train_data: Path, eval_data: str, out: Path, metrics: Path,
              curves: Path | None = None, checkpoints: str = "auto", headline: Path | None = None,
              init: dict[str, Path] | None = None) -> dict[str, Any] | None:
    """Train `setting` on `train_data` (and `eval_data`, or "none") into `out`; write `metrics` (and the flat
    `headline`). `checkpoints`: a folder, "auto" (checkpoints/<setting> beside the models folder) or "none".
    `init`: role -> an adapter folder to start from (see `train_setting`). Returns the result on rank 0
    (None on other ranks, which write nothing)."""
    from reflectevo.config.params import load_section, read_params
    from reflectevo.config.presets import load_preset
    from reflectevo.jsonio import write_json
    from reflectevo.models.load import check_available
    from reflectevo.models.fingerprint import model_fingerprint
    from reflectevo.settings import setting as setting_of
    from reflectevo.training.config import TrainConfig
    from reflectevo.training.dist import is_main_process, one_gpu_without_launcher
    from reflectevo.training.model import train_method
    from reflectevo.training.run import train_setting

    spec = setting_of(setting, "--setting")
    raw_params = read_params(params)
    name, preset = load_preset(raw_params)
    cfg = load_section(raw_params, "train", TrainConfig)
    train_method(name, preset, cfg.method)  # a method the preset cannot do: one line before anything is read
    if spec.family == "rl":  # prompts from the raw episodes; nothing is read while RL is disabled
        train_rows = rl_rows_of(train_data, cfg.rl) if cfg.rl.enabled else []
        eval_rows: list[dict[str, Any]] = []
    else:
        train_rows = read_rows(train_data, setting)
        eval_rows = [] if eval_data == "none" else read_rows(Path(eval_data), setting)
    if train_rows:   # (nothing to train, e.g. a disabled RL setting: no torch import, no GPU)
        one_gpu_without_launcher()  # several GPUs but no launcher: train on the first (TRL refuses nn.DataParallel)
        check_available(name, preset)  # an unreachable hub preset: one line before any checkpoint is written
    announce_plan(setting, spec, train_rows, eval_rows, train_data, cfg, name, preset)
    if checkpoints == "none" or init:   # a checkpoint's key does not hold the starting weights
        ckpt_dir = None
    elif checkpoints == "auto":
        ckpt_dir = out.parent.parent / "checkpoints" / setting
    else:
        ckpt_dir = Path(checkpoints)
    result = train_setting(setting, name, preset, model_fingerprint(name, preset), train_rows, eval_rows, cfg, out,
                           curves_dir=curves, checkpoint_dir=ckpt_dir, init=init)
    if not is_main_process():  # under a multi-process launcher, only rank 0 writes
        return None
    if curves is not None:  # a declared DVC output: present (empty) even when nothing was trained
        (curves / "plots" / "metrics").mkdir(parents=True, exist_ok=True)
    write_json(metrics, {"model": name, **result})
    if headline is not None:  # full JSON above (plain output), small flat copy here (DVC metric)
        from reflectevo.metrics_summary import train_headline

        write_json(headline, train_headline(result))
    return result


def announce_plan(setting: str, spec, train_rows: list, eval_rows: list, train_data: Path, cfg, name: str,
                  preset) -> str:
    """The stage line (`reflectevo.progress.announce`): the setting, its data, budget and model."""
    from reflectevo.models.load import resolve_dtype
    from reflectevo.progress import announce, model_label
    from reflectevo.training.model import train_method
    from reflectevo.training.progress import describe_plan

    if spec.family == "rl" and not cfg.rl.enabled:
        return announce(f"train@{setting}", "online RL, not enabled (train.rl.enabled: false): writes its card only")
    if not train_rows:
        return announce(f"train@{setting}", f"no training rows in {train_data}: writes a card saying so")
    hp = {"sft": cfg.sft, "dpo": cfg.dpo, "rl": cfg.rl}[spec.family]
    dtype = str(resolve_dtype(preset.dtype)).replace("torch.", "")
    return announce(f"train@{setting}", describe_plan(spec, len(train_rows), len(eval_rows), hp,
                                           train_method(name, preset, cfg.method), preset.lora,
                                           model_label(name, preset, dtype)))


def rl_rows_of(raw_dir: Path, hp) -> list[dict]:
    """RL prompts from the episodes in `raw_dir` (generate's output): failed trial-1 attempts (oracle) or every
    item (intrinsic). Episodes but no failed attempt -> one line, exit 2; no episodes -> "no training data"."""
    from reflectevo.episodes.shards import iter_episodes
    from reflectevo.training.data import rl_rows

    if not raw_dir.is_dir():
        raise ReflectEvoError(f"{raw_dir}: no raw episodes folder (run the generate stage: `dvc repro generate`)")
    episodes = {}
    for where, ep in iter_episodes(raw_dir, where=True):   # each checked: file and row on a damaged one
        problem = rl_episode_problem(ep)
        if problem:
            raise ReflectEvoError(f"{where}: {problem}")
        episodes[ep["episode_id"]] = ep
    rows = rl_rows(episodes, hp.protocol, hp.limit)
    if episodes and not rows:
        raise ReflectEvoError(f"{raw_dir}: no failed trial-1 attempts among {len(episodes)} episodes (train.rl.protocol: "
                              "oracle trains on failures only); use train.rl.protocol: intrinsic or generate more items")
    return rows


def rl_episode_problem(ep: dict[str, Any]) -> str | None:
    """What makes a raw episode unusable as an RL prompt (the fields `rl_rows` reads), or None."""
    from reflectevo.tasks.base import Item

    if not isinstance(ep.get("episode_id"), str):
        return "field 'episode_id' must be a string"
    problem = Item.problem(ep.get("item"))
    if problem:
        return f"item: {problem}"
    t1 = ep.get("trial1")
    if not isinstance(t1, dict):
        return "field 'trial1' must be an object"
    if not isinstance(t1.get("correct"), bool):
        return "field 'trial1.correct' must be true or false"
    if not isinstance(t1.get("attempt", t1.get("completion")), str):
        return "field 'trial1.attempt' (or 'trial1.completion') must be a string"
    if not isinstance(t1.get("extracted"), (str, type(None))):
        return "field 'trial1.extracted' must be a string or null"
    return None


def read_rows(path: Path, setting: str) -> list[dict]:
    """The rows of a training file; a malformed or unusable row fails with `file:line: what`."""
    from reflectevo.jsonio import iter_jsonl_lines
    from reflectevo.tasks.registry import TaskCache
    from reflectevo.training.data import row_problem, row_task_problem

    rows, tasks = [], TaskCache()
    for line, row in iter_jsonl_lines(path):  # malformed JSON -> file:line
        problem = row_problem(setting, row) or row_task_problem(setting, row, tasks)
        if problem:
            raise ReflectEvoError(f"{path}:{line}: {problem} (a {setting} training row)")
        rows.append(row)
    return rows
