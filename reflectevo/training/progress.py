"""What the train stage shows: its line (setting, data, budget, model), one bar per adapter role with the loss
and an ETA (a TrainerCallback, in place of the Trainer's printed log dicts), and a one-line result."""

from __future__ import annotations

import math
import sys
from typing import Any, TextIO

from reflectevo.progress import bar_width, plural, seconds_label

DATA_NAMES = {"dplus": ("D+ row", None), "dpm": ("D± pair", None), "dpref": ("Dpref pair", None),
              "sources": ("train item", None), "raw": ("failed trial-1 attempt", None)}
FAMILY_NAMES = {"sft": "SFT", "dpo": "DPO", "rl": "online RL"}


def planned_steps(n_rows: int, hp: Any) -> int:
    """Optimizer steps a run will take: `max_steps` when set (> 0), else epochs over the rows (one process)."""
    if hp.max_steps > 0:
        return hp.max_steps
    per_step = max(1, hp.batch_size * hp.grad_accum)
    return max(1, math.ceil(hp.epochs * math.ceil(n_rows / per_step)))


def describe_plan(spec: Any, n_train: int, n_eval: int, hp: Any, method: str, lora: Any,
                  model: str) -> str:
    """`53 D+ rows (4 held out) → SFT, LoRA r=8, 10 steps × batch 4, max_length 768 on SmolLM2-135M-Instruct, bf16`."""
    data, many = DATA_NAMES.get(spec.data, (f"{spec.data} row", None))
    held = f" ({n_eval} held out)" if n_eval else ""
    how = f"LoRA r={lora.r}" if method == "lora" else "every weight"
    roles = f", {len(spec.roles)} adapters ({', '.join(spec.roles)})" if len(spec.roles) > 1 else ""
    steps = planned_steps(n_train, hp)
    each = " each" if len(spec.roles) > 1 else ""
    return (f"{plural(n_train, data, many)}{held} → {FAMILY_NAMES.get(spec.family, spec.family)}, "
            f"{how}{roles}, {plural(steps, 'step')}{each} × batch {hp.batch_size * hp.grad_accum}, "
            f"max_length {hp.max_length} on {model}")


def describe_result(setting: str, result: dict[str, Any]) -> str:
    """The stage's last line: per role its steps, first → last loss and time; or why nothing was trained."""
    if not result.get("trained"):
        return f"{setting}: not trained: {result.get('reason') or result.get('status') or 'no training data'}"
    parts = []
    for role, r in result.items():
        if not isinstance(r, dict) or "steps" not in r:
            continue
        loss = (f"loss {r['first_loss']} → {r['last_loss']}" if r.get("first_loss") is not None
                else f"loss {r.get('train_loss')}")
        reused = ", reused from its checkpoint" if r.get("reused") else ""
        parts.append(f"{role}: {plural(r['steps'], 'step')}, {loss}, {seconds_label(r.get('seconds') or 0)}{reused}")
    return f"{setting}: " + "; ".join(parts)


def progress_callback(label: str, file: TextIO | None = None, enabled: bool = True):
    """A TrainerCallback drawing one bar over the optimizer steps (a resumed run starts at its step) with the
    latest loss (and eval loss, DPO reward accuracy, RL reward) and an ETA; only the main process draws."""
    from transformers import TrainerCallback

    shown = (("loss", "loss"), ("eval_loss", "eval loss"), ("rewards/accuracies", "reward acc"), ("reward", "reward"))

    class TrainProgress(TrainerCallback):
        bar = None
        latest: dict[str, float] = {}

        def on_train_begin(self, args, state, control, **kwargs):
            if not enabled or not state.is_world_process_zero:
                return
            from tqdm.auto import tqdm

            self.latest = {}
            out = file or sys.stderr
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=label, unit="step", file=out,
                            smoothing=0.3, **bar_width(out))

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None and state.global_step > self.bar.n:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.bar is None or not logs:
                return
            for key, name in shown:
                if isinstance(logs.get(key), (int, float)):
                    self.latest[name] = float(logs[key])
            if self.latest:
                self.bar.set_postfix_str(", ".join(f"{k} {v:.3f}" for k, v in self.latest.items()))

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return TrainProgress()


def replace_printer(trainer: Any, label: str, enabled: bool = True) -> None:
    """Swap the Trainer's log printer (`disable_tqdm=True` prints every log as a dict) for `progress_callback`."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(progress_callback(label, enabled=enabled))
