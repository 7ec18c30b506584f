"""Model cards of a setting's folder, and dvclive curves logged against the global step."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from reflectevo.jsonio import write_json, write_text
from reflectevo.modelcard import model_card_text
from reflectevo.training.dist import is_main_process


def write_card(out_dir: Path, card: dict[str, Any]) -> None:
    """model_card.json, and README.md cards with Hub metadata: the setting's, and one per role folder."""
    if not is_main_process():
        return
    write_json(out_dir / "model_card.json", card)
    write_text(out_dir / "README.md", model_card_text(card))
    for role, sub in card.get("adapters", {}).items():
        if sub != "." and (out_dir / sub).is_dir():
            write_text(out_dir / sub / "README.md", model_card_text(card, role=role))


_LOGGED = ("loss", "eval_loss", "learning_rate", "grad_norm", "mean_token_accuracy", "eval_mean_token_accuracy",
           "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected", "eval_rewards/accuracies",
           # online RL (TRL GRPO / RLOO logs, plus the reflect-retry rollout's own)
           "reward", "reward_std", "kl", "rewards/correct/mean", "rewards/format/mean", "completions/mean_length",
           "completions/clipped_ratio", "frac_reward_zero_std", "entropy", "retry/repeat_rate", "retry/correct",
           "retry/answer_step", "reflection/truncated")


def _log_to_live(live, prefix: str, step: int, logs: dict[str, Any]) -> None:
    live.step = step
    for key in _LOGGED:
        if isinstance(logs.get(key), (int, float)):
            live.log_metric(f"{prefix}/{key}", float(logs[key]))


def replay_history(live, prefix: str, history: list[dict[str, Any]]) -> None:
    """Write an earlier run's log history (a resumed checkpoint's, or a reused adapter's) to dvclive, so the
    curves cover every global step once."""
    if live is None or not history:
        return
    for entry in history:
        if isinstance(entry.get("step"), int):
            _log_to_live(live, prefix, entry["step"], entry)
    live.make_summary()


def step_logger(live, prefix: str):
    """A TrainerCallback logging to dvclive against the *global step* (dvclive's own HF callback counts
    log events instead, and `report_to="dvclive"` rewrites dvc.yaml). Only the main process logs. On a
    resumed run it first replays the checkpoint's history (the steps before the kill)."""
    from transformers import TrainerCallback

    class StepLogger(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if live is not None and state.is_world_process_zero:
                replay_history(live, prefix, state.log_history)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if live is None or not state.is_world_process_zero or not logs:
                return
            _log_to_live(live, prefix, state.global_step, logs)
            live.make_summary()

    return StepLogger()


def _live(curves_dir: Path | None):
    if curves_dir is None:
        return None
    from dvclive import Live

    if not is_main_process():
        return None
    if curves_dir.exists():
        shutil.rmtree(curves_dir)
    return Live(str(curves_dir), dvcyaml=False, save_dvc_exp=False, report=None)
