"""Trainer checkpoints keyed by everything that decides the result: resume after a kill, never across params."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

from reflectevo.config.loader import to_dict
from reflectevo.config.presets import ModelPreset
from reflectevo.jsonio import write_json
from reflectevo.training.data import data_hash
from reflectevo.training.dist import _barrier, is_main_process, num_processes

CHECKPOINT_ONLY = ("save_steps", "save_total_limit")  # hyper-parameters that do not change the result
KEY_FILE = "key.json"
_CHECKPOINT_RE = re.compile(r"checkpoint-(\d+)")


def checkpoint_key(setting: str, role: str, model_fp: dict[str, str], preset: ModelPreset, hp, seed: int,
                   train_examples: list[dict[str, Any]], eval_examples: list[dict[str, Any]], method: str = "lora",
                   lr: float | None = None, gradient_checkpointing: bool = False) -> tuple[str, dict]:
    """(key, what it hashes): a checkpoint is resumed only by a run whose key is the same."""
    import peft
    import torch
    import transformers
    import trl

    what = {"setting": setting, "role": role, "base": model_fp,
            "preset": {"dtype": preset.dtype, "quantization": preset.quantization, "lora": to_dict(preset.lora),
                       "lr": lr if lr is not None else preset.lr_dpo if setting.startswith("dpo") else preset.lr_sft,
                       "method": method, "gradient_checkpointing": gradient_checkpointing},
            "train": {k: v for k, v in to_dict(hp).items() if k not in CHECKPOINT_ONLY}, "seed": seed,
            "data": {"train": data_hash(train_examples), "eval": data_hash(eval_examples)},
            "num_processes": num_processes(),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
                         "peft": peft.__version__}}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16], what


def latest_checkpoint(run_dir: Path) -> tuple[Path, int] | None:
    """The newest *complete* trainer checkpoint in `run_dir`, with its global step. The trainer writes
    `trainer_state.json` last, so a checkpoint whose state parses and names its own step is whole; one cut
    off while saving (killed mid-write) is skipped for the one before it."""
    if not run_dir.is_dir():
        return None
    found = sorted(((int(m.group(1)), p) for p in run_dir.iterdir()
                    if p.is_dir() and (m := _CHECKPOINT_RE.fullmatch(p.name))), reverse=True)
    for step, path in found:
        try:
            state = json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(state, dict) and state.get("global_step") == step:
            return path, step
    return None


class RoleCheckpoints:
    """`<root>/<role>-<key>/`: `key.json`, the trainer's `checkpoint-<step>/` folders, and once the role has
    finished `final/` (the saved adapter + `result.json` + `log_history.json`)."""

    def __init__(self, root: Path, role: str, key: str, what: dict[str, Any]) -> None:
        self.root, self.role, self.key, self.what = root, role, key, what
        self.dir = root / f"{role}-{key}"

    def finished(self) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        final = self.dir / "final"
        try:
            return (json.loads((final / "result.json").read_text()),
                    json.loads((final / "log_history.json").read_text()))
        except (OSError, ValueError):
            return None

    def prepare(self) -> tuple[Path, int] | None:
        """Latest valid checkpoint to resume from (all ranks read it), after the main process dropped
        half-written ones."""
        found = latest_checkpoint(self.dir)
        _barrier()
        if is_main_process():
            self.dir.mkdir(parents=True, exist_ok=True)
            write_json(self.dir / KEY_FILE, {"key": self.key, **self.what})
            for p in self.dir.iterdir():  # newer than the resumed one = cut off by the kill
                m = _CHECKPOINT_RE.fullmatch(p.name)
                if m and p.is_dir() and (found is None or int(m.group(1)) > found[1]):
                    shutil.rmtree(p, ignore_errors=True)
        _barrier()
        return found

    def finish(self, adapter_dir: Path, result: dict[str, Any], history: list[dict[str, Any]], keep: bool) -> None:
        """Keep the finished adapter (atomically: `final.tmp` renamed) so a later rerun reuses it."""
        if is_main_process():
            tmp, final = self.dir / "final.tmp", self.dir / "final"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(adapter_dir, tmp, ignore=shutil.ignore_patterns(*_ROLE_DIRS, "model_card.json",
                                                                                 "README.md"))
            write_json(tmp / "result.json", result)
            write_json(tmp / "log_history.json", history)
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            if not keep:
                for p in self.dir.iterdir():
                    if _CHECKPOINT_RE.fullmatch(p.name):
                        shutil.rmtree(p, ignore_errors=True)
        _barrier()

    def reuse(self, adapter_dir: Path) -> None:
        if is_main_process():
            shutil.copytree(self.dir / "final", adapter_dir, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("result.json", "log_history.json"))
        _barrier()


_ROLE_DIRS = ("reflector", "corrector")


def no_checkpoint_at_the_end():
    """A TrainerCallback that keeps the trainer from saving a checkpoint at its last step (it does, whatever
    `save_steps` says). Resumed from that checkpoint, transformers' loop runs one step past `max_steps` when
    the cap falls inside an epoch (it checks the cap only after a step), and the checkpoint lacks the final
    evaluation; so a run killed between it and `final/` would end elsewhere than an uninterrupted one. The
    role's `final/` folder is the end state a rerun reuses; without it, the rerun resumes from the last
    periodic checkpoint and redoes the steps after it."""
    from transformers import TrainerCallback

    class NoCheckpointAtTheEnd(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.max_steps > 0 and state.global_step >= state.max_steps:
                control.should_save = False
            return control

    return NoCheckpointAtTheEnd()


def remove_checkpoints(root: Path) -> None:
    """Remove every keyed run folder under `root` (this setting's, stale keys included), then `root` if empty."""
    if not is_main_process() or not root.is_dir():
        return
    for p in root.iterdir():
        if p.is_dir() and (p / KEY_FILE).exists():
            shutil.rmtree(p, ignore_errors=True)
    try:
        root.rmdir()
    except OSError:
        pass
