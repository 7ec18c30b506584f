"""`train_setting`: train every role of a setting into its folder, with checkpoints, curves and the card."""

from __future__ import annotations

import functools
import shutil
import time
from pathlib import Path
from typing import Any

from reflectevo.config.loader import to_dict
from reflectevo.config.presets import ModelPreset
from reflectevo.training.config import TrainConfig
from reflectevo.modelcard import base_model_info
from reflectevo.settings import setting as setting_of
from reflectevo.training.card import _live, replay_history, step_logger, write_card
from reflectevo.training.checkpoint import RoleCheckpoints, checkpoint_key, no_checkpoint_at_the_end, remove_checkpoints
from reflectevo.training.data import data_hash, examples
from reflectevo.training.dist import _barrier, is_main_process
from reflectevo.training.offline import build_offline_trainer
from reflectevo.training.progress import replace_printer
from reflectevo.training.model import (_portable_adapter, _portable_model, _tokens_per_s, learning_rate,
                                       load_adapter_weights, train_method)
from reflectevo.training.rl import build_rl_trainer
from reflectevo.backends.vllm_lora import VLLM_MAX_LORA_RANKS, _base_config, check_vllm_lora_compat


def train_setting(setting: str, preset_name: str, preset: ModelPreset, model_fp: dict[str, str],
                  train_rows: list[dict[str, Any]], eval_rows: list[dict[str, Any]], cfg: TrainConfig,
                  out_dir: Path, curves_dir: Path | None = None, checkpoint_dir: Path | None = None,
                  init: dict[str, Path] | None = None) -> dict[str, Any]:
    """Train every adapter of `setting` into `out_dir` (fresh); returns the metrics for metrics/train/.

    With `curves_dir`, train/eval curves go there through dvclive (`plots/metrics/<role>/<name>.tsv`).
    With `checkpoint_dir` (and `save_steps` > 0), checkpoints go there and an interrupted run resumes
    (see the module docstring); without it nothing is saved until the end.

    `init` (role -> a saved LoRA adapter folder of the same preset and LoRA config): that role starts from
    those weights instead of a fresh LoRA (self-evolution's `evolve.init: previous`); its checkpoints are
    not used, since their key does not hold the starting weights. The result lists the tensors loaded per
    role (`init`)."""
    spec = setting_of(setting)
    kind = spec.family
    method = train_method(preset_name, preset, cfg.method)  # a refused method: one line, nothing written
    if is_main_process() and out_dir.exists():
        shutil.rmtree(out_dir)  # never mix files of an earlier run into this one
    out_dir.mkdir(parents=True, exist_ok=True)
    is_dpo = kind == "dpo"
    hp = {"sft": cfg.sft, "dpo": cfg.dpo, "rl": cfg.rl}[kind]
    lr = learning_rate(kind, method, preset, cfg)
    card: dict[str, Any] = {"setting": setting, "base": model_fp, "base_model": base_model_info(preset_name, preset),
                            "n_train": len(train_rows), "n_eval": len(eval_rows),
                            "data_hash": data_hash(train_rows + eval_rows), "adapters": {},
                            "params": {"train": to_dict(hp), "seed": cfg.seed, "lr": lr, "method": method,
                                       "gradient_checkpointing": cfg.gradient_checkpointing,
                                       **({"lora": to_dict(preset.lora)} if method == "lora" else {})},
                            "method": method,
                            "reference": ("none (beta 0)" if kind == "rl" and cfg.rl.beta == 0 else
                                          "the base with the adapter disabled" if method == "lora" else
                                          "a frozen copy of the base") if kind != "sft" else None}
    if spec.retry == "card":   # the trained reflector retries, or the base: evaluation reads it from the card
        card["retry_by"], card["train_retry"] = cfg.rl.retry_by, cfg.rl.train_retry
    result: dict[str, Any] = {"setting": setting, "n_train": len(train_rows), "n_eval": len(eval_rows),
                              "method": method}
    if kind == "rl" and not cfg.rl.enabled:
        reason = "not enabled (train.rl.enabled: false; dvc exp run -S train.rl.enabled=true trains it)"
        card.update(status="disabled", reason=reason)
        write_card(out_dir, card)
        return {**result, "trained": False, "status": "disabled", "reason": reason}
    if preset.source == "scripted":   # a dry run of the data path: no weights to train
        reason = f"preset {preset_name!r} is scripted (no weights): nothing to train"
        card.update(status="skipped", reason=reason)
        write_card(out_dir, card)
        return {**result, "trained": False, "status": "skipped", "reason": reason}
    if not train_rows:
        data = {"dpm": "D±", "dpref": "Dpref", "sources": "the train split", "raw": "data/raw's trial-1 attempts"}.get(
            spec.data, "D+")
        reason = f"{data} is empty" + (": no reflection fixed a trial-1 answer" if data == "D+" else "")
        card.update(status="no training data", reason=reason)
        write_card(out_dir, card)
        return {**result, "trained": False, "reason": reason}

    train_ex, eval_ex = examples(setting, train_rows), examples(setting, eval_rows)
    roles = spec.roles
    init = dict(init or {})
    if init:
        result["init"] = {}
    live = _live(curves_dir)
    checkpointing = checkpoint_dir is not None and hp.save_steps > 0
    base_config = _base_config(preset_name, preset)
    card.update(resumed_from_step={}, checkpoint_keys={}, vllm_lora={})
    for role in roles:
        sub = out_dir if len(roles) == 1 else out_dir / role
        ckpt = None
        if checkpointing and role not in init:
            key, what = checkpoint_key(setting, role, model_fp, preset, hp, cfg.seed, train_ex[role], eval_ex[role],
                                       method=method, lr=lr, gradient_checkpointing=cfg.gradient_checkpointing)
            ckpt = RoleCheckpoints(checkpoint_dir, role, key, what)
            card["checkpoint_keys"][role] = key
            done = ckpt.finished()
            if done is not None:  # this role finished in an earlier (killed) run: reuse its adapter
                ckpt.reuse(sub)
                replay_history(live, role, done[1])
                result[role] = {**done[0], "resumed_from_step": done[0]["steps"], "reused": True}
                card["resumed_from_step"][role] = done[0]["steps"]
                card["adapters"][role] = "." if sub == out_dir else role
                if is_main_process() and method == "lora":
                    card["vllm_lora"][role] = check_vllm_lora_compat(sub, VLLM_MAX_LORA_RANKS[-1], base_config)
                continue
        resume = ckpt.prepare() if ckpt is not None else None
        if kind == "rl":
            build = functools.partial(build_rl_trainer, setting)
        else:
            build = functools.partial(build_offline_trainer, kind)
        trainer = build(preset_name, preset, train_ex[role], eval_ex[role], cfg,
                        ckpt.dir if ckpt is not None else out_dir / "checkpoints", save_checkpoints=ckpt is not None)
        if role in init:
            result["init"][role] = load_adapter_weights(trainer.model, init[role])
        trainer.add_callback(step_logger(live, role))
        if ckpt is not None:
            trainer.add_callback(no_checkpoint_at_the_end())
        replace_printer(trainer, setting if len(roles) == 1 else f"{setting} {role}")
        dropped = len(train_ex[role]) - len(trainer.train_dataset)  # TRL drops examples truncation emptied
        if len(trainer.train_dataset) == 0:
            what_lost = "prompts are longer than" if kind == "rl" else "examples lose their target at"
            reason = (f"all {len(train_ex[role])} {role} {what_lost} max_length={hp.max_length}; "
                      f"raise train.{kind}.max_length")
            card.update(status="no training data", reason=reason, dropped_by_truncation={role: dropped})
            write_card(out_dir, card)
            return {**result, "trained": False, "reason": reason}
        resumed = resume[1] if resume is not None else 0
        t0 = time.perf_counter()
        out = trainer.train(resume_from_checkpoint=str(resume[0]) if resume is not None else None)
        seconds = time.perf_counter() - t0
        trainer.save_model(str(sub))  # collective under FSDP/ZeRO-3: every rank calls it
        if is_main_process():
            if method == "lora":
                _portable_adapter(sub, preset_name)
            else:
                _portable_model(sub, preset_name, trainer.processing_class)
        if ckpt is None:
            shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
        logs = trainer.state.log_history
        losses = [h["loss"] for h in logs if "loss" in h]
        evals = [h["eval_loss"] for h in logs if "eval_loss" in h]
        # after a resume, TRL's training_loss averages this process's steps only: average the whole history
        train_loss = out.training_loss if not resumed or not losses else sum(losses) / len(losses)
        card["adapters"][role] = "." if sub == out_dir else role
        card["resumed_from_step"][role] = resumed
        result[role] = {"steps": trainer.state.global_step, "train_loss": round(train_loss, 4),
                        "first_loss": round(losses[0], 4) if losses else None,
                        "last_loss": round(losses[-1], 4) if losses else None,
                        "eval_loss": round(evals[-1], 4) if evals else None,
                        "dropped_by_truncation": dropped, "seconds": round(seconds, 2),
                        "train_tokens_per_s": _tokens_per_s(trainer, hp, seconds, trainer.state.global_step - resumed),
                        "resumed_from_step": resumed}
        if is_dpo:
            acc = [h["rewards/accuracies"] for h in logs if "rewards/accuracies" in h]
            result[role]["reward_accuracy"] = round(acc[-1], 4) if acc else None
        if kind == "rl":
            result[role].update(rl_summary(logs, trainer.state.global_step - resumed, seconds))
        if is_main_process() and method == "lora":
            card["vllm_lora"][role] = check_vllm_lora_compat(sub, VLLM_MAX_LORA_RANKS[-1], base_config)
        if ckpt is not None:
            ckpt.finish(sub, result[role], logs, keep=cfg.keep_checkpoints)
    if live is not None:
        live.end()
    if card["vllm_lora"]:
        card["vllm_lora_compatible"] = all(v["compatible"] for v in card["vllm_lora"].values())
    card.update(status="trained")
    write_card(out_dir, card)
    if checkpointing and not cfg.keep_checkpoints:
        remove_checkpoints(checkpoint_dir)
        _barrier()
    return {**result, "trained": True}


def rl_summary(logs: list[dict[str, Any]], steps: int, seconds: float) -> dict[str, Any]:
    """First / last / mean of the RL curves (reward, fraction of correct rollouts, KL, lengths), and steps/s."""
    out: dict[str, Any] = {"steps_per_s": round(steps / seconds, 4) if seconds and steps > 0 else None}
    for key, name in (("reward", "reward"), ("rewards/correct/mean", "correct"), ("kl", "kl"),
                      ("completions/mean_length", "completion_length"), ("completions/clipped_ratio", "truncated"),
                      ("retry/repeat_rate", "retry_repeat_rate"),
                      ("retry/correct", "retry_correct"), ("retry/answer_step", "retry_answer_step")):
        vals = [float(h[key]) for h in logs if isinstance(h.get(key), (int, float))]
        if vals:
            out[name] = {"first": round(vals[0], 4), "last": round(vals[-1], 4), "mean": round(sum(vals) / len(vals), 4)}
    return out
