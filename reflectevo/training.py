"""Train the learning settings with TRL + PEFT (LoRA on the preset's base).

| setting    | data          | adapters                | objective |
|------------|---------------|-------------------------|-----------|
| one_stage  | D+            | `.`                     | SFT: one-stage prompt -> reflection + "Answer:" + trial-2 reasoning |
| two_stage  | D+            | `reflector`, `corrector`| SFT: test reflection prompt -> reflection; trial-2 prompt (with r and trial 1) -> trial 2 |
| dpo_pm     | D±            | `.`                     | DPO: test reflection prompt, chosen vs rejected reflection |
| dpo_pref   | Dpref         | `.`                     | same, on judge-ranked pairs |
| sft_qa     | train items   | `.`                     | SFT baseline: trial-1 prompt -> the gold answer in the answer form |

Every example is in prompt/completion (or prompt/chosen/rejected) form rendered by the model's own chat
template, so the loss covers only the target turn (tests check the labels). The prompts are the ones
evaluation uses. Empty data -> the setting records "no training data" and the pipeline goes on.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

from reflectevo.config import ModelPreset, TrainConfig, to_dict
from reflectevo.jsonio import write_json, write_text
from reflectevo.prompts import (answer_target, one_stage_messages, one_stage_target, reflection_messages,
                                trial_messages)
from reflectevo.tasks import Item, get_task

SETTINGS = ("one_stage", "two_stage", "dpo_pm", "dpo_pref", "sft_qa")
ADAPTERS = {"one_stage": ("one_stage",), "two_stage": ("reflector", "corrector"), "dpo_pm": ("reflector",),
            "dpo_pref": ("reflector",), "sft_qa": ("answerer",)}


def row_item(row: dict[str, Any]) -> Item:
    return Item(id=row["item_id"], task=row["task"], question=row["question"], answer=row["answer"],
                choices=tuple(row["choices"]) if row.get("choices") else None)


class _Tasks(dict):
    def __missing__(self, name: str):
        self[name] = get_task(name)
        return self[name]


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def examples(setting: str, rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Training examples per adapter role for a setting (rows: D+, D±/Dpref, or source items)."""
    tasks = _Tasks()
    if setting == "one_stage":
        return {"one_stage": [{"prompt": one_stage_messages(tasks[r["task"]], row_item(r), r["trial1"]),
                               "completion": _assistant(one_stage_target(r["reflection"], r["trial2"]))}
                              for r in rows]}
    if setting == "two_stage":
        return {
            "reflector": [{"prompt": reflection_messages(row_item(r), r["trial1"], None),
                           "completion": _assistant(r["reflection"].strip())} for r in rows],
            "corrector": [{"prompt": trial_messages(tasks[r["task"]], row_item(r), reflection=r["reflection"],
                                                    previous=r["trial1"]),
                           "completion": _assistant(r["trial2"].strip())} for r in rows],
        }
    if setting in ("dpo_pm", "dpo_pref"):
        return {"reflector": [{"prompt": reflection_messages(row_item(r), r["trial1"], None),
                               "chosen": _assistant(r["chosen"]["reflection"].strip()),
                               "rejected": _assistant(r["rejected"]["reflection"].strip())} for r in rows]}
    if setting == "sft_qa":
        out = []
        for r in rows:  # unified-schema items
            item = Item.from_dict(r)
            task = tasks[item.task]
            out.append({"prompt": trial_messages(task, item), "completion": _assistant(answer_target(task, item))})
        return {"answerer": out}
    raise ValueError(f"unknown setting {setting!r}")


def data_hash(rows: list[dict[str, Any]]) -> str:
    return hashlib.sha256("\n".join(json.dumps(r, sort_keys=True) for r in rows).encode()).hexdigest()[:16]


def is_main_process() -> bool:
    """True on the main process (always, outside `accelerate launch` / torchrun)."""
    from accelerate import PartialState

    return PartialState().is_main_process


def write_card(out_dir: Path, card: dict[str, Any]) -> None:
    if not is_main_process():
        return
    write_json(out_dir / "model_card.json", card)
    lines = [f"# {card['setting']}", "", f"- status: **{card['status']}**",
             f"- base preset: `{card['base']['preset']}` ({card['base']['source']}, revision {card['base']['revision']})",
             f"- training rows: {card['n_train']} (eval {card['n_eval']}), data hash `{card['data_hash']}`",
             f"- adapters: {', '.join(f'`{k}` -> `{v}`' for k, v in card.get('adapters', {}).items()) or 'none'}"]
    if card.get("reason"):
        lines.append(f"- reason: {card['reason']}")
    lines += ["", "Load an adapter with `PeftModel.from_pretrained(base, dir)`; the base comes from the preset, "
              "never from an absolute path.", "", "```json", json.dumps(card["params"], indent=2), "```", ""]
    write_text(out_dir / "README.md", "\n".join(lines))


_LOGGED = ("loss", "eval_loss", "learning_rate", "grad_norm", "mean_token_accuracy", "eval_mean_token_accuracy",
           "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected", "eval_rewards/accuracies")


def step_logger(live, prefix: str):
    """A TrainerCallback logging to dvclive against the *global step* (dvclive's own HF callback counts
    log events instead, and `report_to="dvclive"` rewrites dvc.yaml). Only the main process logs."""
    from transformers import TrainerCallback

    class StepLogger(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if live is None or not state.is_world_process_zero or not logs:
                return
            live.step = state.global_step
            for key in _LOGGED:
                if isinstance(logs.get(key), (int, float)):
                    live.log_metric(f"{prefix}/{key}", float(logs[key]))
            live.make_summary()

    return StepLogger()


def train_setting(setting: str, preset_name: str, preset: ModelPreset, model_fp: dict[str, str],
                  train_rows: list[dict[str, Any]], eval_rows: list[dict[str, Any]], cfg: TrainConfig,
                  out_dir: Path, curves_dir: Path | None = None) -> dict[str, Any]:
    """Train every adapter of `setting` into `out_dir` (fresh); returns the metrics for metrics/train/.

    With `curves_dir`, train/eval curves go there through dvclive (`plots/metrics/<role>/<name>.tsv`)."""
    if is_main_process() and out_dir.exists():
        shutil.rmtree(out_dir)  # never mix files of an earlier run into this one
    out_dir.mkdir(parents=True, exist_ok=True)
    is_dpo = setting.startswith("dpo")
    hp = cfg.dpo if is_dpo else cfg.sft
    card: dict[str, Any] = {"setting": setting, "base": model_fp, "n_train": len(train_rows), "n_eval": len(eval_rows),
                            "data_hash": data_hash(train_rows + eval_rows), "adapters": {},
                            "params": {"train": to_dict(hp), "seed": cfg.seed, "lora": to_dict(preset.lora),
                                       "lr": preset.lr_dpo if is_dpo else preset.lr_sft}}
    result: dict[str, Any] = {"setting": setting, "n_train": len(train_rows), "n_eval": len(eval_rows)}
    if not train_rows:
        data = {"dpo_pm": "D±", "dpo_pref": "Dpref", "sft_qa": "the train split"}.get(setting, "D+")
        reason = f"{data} is empty" + (": no reflection fixed a trial-1 answer" if data == "D+" else "")
        card.update(status="no training data", reason=reason)
        write_card(out_dir, card)
        return {**result, "trained": False, "reason": reason}

    train_ex, eval_ex = examples(setting, train_rows), examples(setting, eval_rows)
    roles = ADAPTERS[setting]
    live = _live(curves_dir)
    for role in roles:
        sub = out_dir if len(roles) == 1 else out_dir / role
        build = build_dpo_trainer if is_dpo else build_sft_trainer
        trainer = build(preset_name, preset, train_ex[role], eval_ex[role], cfg, out_dir / "checkpoints")
        trainer.add_callback(step_logger(live, role))
        dropped = len(train_ex[role]) - len(trainer.train_dataset)  # TRL drops examples truncation emptied
        if len(trainer.train_dataset) == 0:
            reason = (f"all {len(train_ex[role])} {role} examples lose their target at max_length={hp.max_length}; "
                      f"raise train.{'dpo' if is_dpo else 'sft'}.max_length")
            card.update(status="no training data", reason=reason, dropped_by_truncation={role: dropped})
            write_card(out_dir, card)
            return {**result, "trained": False, "reason": reason}
        t0 = time.perf_counter()
        out = trainer.train()
        seconds = time.perf_counter() - t0
        trainer.save_model(str(sub))  # collective under FSDP/ZeRO-3: every rank calls it
        if is_main_process():
            _portable_adapter(sub, preset_name)
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
        logs = trainer.state.log_history
        losses = [h["loss"] for h in logs if "loss" in h]
        evals = [h["eval_loss"] for h in logs if "eval_loss" in h]
        card["adapters"][role] = "." if sub == out_dir else role
        result[role] = {"steps": trainer.state.global_step, "train_loss": round(out.training_loss, 4),
                        "first_loss": round(losses[0], 4) if losses else None,
                        "last_loss": round(losses[-1], 4) if losses else None,
                        "eval_loss": round(evals[-1], 4) if evals else None,
                        "dropped_by_truncation": dropped, "seconds": round(seconds, 2),
                        "train_tokens_per_s": _tokens_per_s(trainer, hp, seconds)}
        if is_dpo:
            acc = [h["rewards/accuracies"] for h in logs if "rewards/accuracies" in h]
            result[role]["reward_accuracy"] = round(acc[-1], 4) if acc else None
    if live is not None:
        live.end()
    card.update(status="trained")
    write_card(out_dir, card)
    return {**result, "trained": True}


def _live(curves_dir: Path | None):
    if curves_dir is None:
        return None
    from dvclive import Live

    if not is_main_process():
        return None
    if curves_dir.exists():
        shutil.rmtree(curves_dir)
    return Live(str(curves_dir), dvcyaml=False, save_dvc_exp=False, report=None)


def _tokens_per_s(trainer, hp, seconds: float) -> float | None:
    """Training tokens per second: tokens per example x examples processed (steps x batch x accumulation)."""
    ds = trainer.train_dataset
    cols = [c for c in ("input_ids", "prompt_ids", "chosen_ids", "rejected_ids") if c in ds.column_names]
    if not cols or not seconds or len(ds) == 0:
        return None
    per_example = sum(len(x) for c in cols for x in ds[c]) / len(ds)
    examples_seen = trainer.state.global_step * hp.batch_size * hp.grad_accum
    return round(per_example * examples_seen / seconds, 1)


def _base_model(preset_name: str, preset: ModelPreset):
    """fp32 base for LoRA, or with `quantization: 4bit` an NF4 base prepared for QLoRA (GPU only)."""
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM

    from reflectevo.errors import ReflectEvoError
    from reflectevo.models import hub_revision, resolve_model

    if preset.quantization == "4bit":
        if not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None:
            raise ReflectEvoError(f"models.{preset_name}.quantization: 4bit (QLoRA) needs a CUDA GPU and bitsandbytes "
                                  "(pip install '.[qlora]'); set it to none on this machine")
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                 bnb_4bit_compute_dtype=torch.bfloat16)
        model = AutoModelForCausalLM.from_pretrained(resolve_model(preset_name, preset), revision=hub_revision(preset),
                                                     quantization_config=bnb, dtype=torch.bfloat16)
        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return AutoModelForCausalLM.from_pretrained(resolve_model(preset_name, preset), revision=hub_revision(preset),
                                                dtype=torch.float32)


def _lora(preset: ModelPreset):
    from peft import LoraConfig

    return LoraConfig(r=preset.lora.r, lora_alpha=preset.lora.alpha, lora_dropout=preset.lora.dropout,
                      target_modules=list(preset.lora.targets), task_type="CAUSAL_LM")


def _common_args(config_cls: type, hp, seed: int, lr: float, output_dir: Path, has_eval: bool,
                 dtype_name: str) -> dict[str, Any]:
    import torch

    from reflectevo.models import resolve_dtype

    return dict(
        **_warmup_kwargs(config_cls, hp.warmup_ratio),
        output_dir=str(output_dir), num_train_epochs=hp.epochs, max_steps=hp.max_steps,
        per_device_train_batch_size=hp.batch_size, per_device_eval_batch_size=hp.batch_size,
        gradient_accumulation_steps=hp.grad_accum, learning_rate=lr, max_length=hp.max_length, logging_steps=1,
        save_strategy="no", eval_strategy="epoch" if has_eval else "no", report_to="none", seed=seed,
        use_cpu=not torch.cuda.is_available(), bf16=resolve_dtype(dtype_name) == torch.bfloat16,
        gradient_checkpointing=False, dataloader_num_workers=0, disable_tqdm=True,
    )


def build_sft_trainer(preset_name: str, preset: ModelPreset, train_examples: list[dict[str, Any]],
                      eval_examples: list[dict[str, Any]], cfg: TrainConfig, output_dir: Path):
    """TRL SFTTrainer, fresh LoRA on the base; prompt/completion data -> completion-only loss."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from reflectevo.models import load_tokenizer

    torch.manual_seed(cfg.seed)
    eval_ds = Dataset.from_list(eval_examples) if eval_examples else None
    args = SFTConfig(**_common_args(SFTConfig, cfg.sft, cfg.seed, preset.lr_sft, output_dir, eval_ds is not None,
                                    preset.dtype), completion_only_loss=True)
    return SFTTrainer(model=_base_model(preset_name, preset), processing_class=load_tokenizer(preset_name, preset),
                      peft_config=_lora(preset), train_dataset=Dataset.from_list(train_examples), eval_dataset=eval_ds,
                      args=args)


def build_dpo_trainer(preset_name: str, preset: ModelPreset, train_examples: list[dict[str, Any]],
                      eval_examples: list[dict[str, Any]], cfg: TrainConfig, output_dir: Path):
    """TRL DPOTrainer with a LoRA policy; the reference is the base (adapter off), as in the paper."""
    import torch
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from reflectevo.models import load_tokenizer

    torch.manual_seed(cfg.seed)
    eval_ds = Dataset.from_list(eval_examples) if eval_examples else None
    args = DPOConfig(**_common_args(DPOConfig, cfg.dpo, cfg.seed, preset.lr_dpo, output_dir, eval_ds is not None,
                                    preset.dtype), beta=cfg.dpo.beta)
    return DPOTrainer(model=_base_model(preset_name, preset), ref_model=None,
                      processing_class=load_tokenizer(preset_name, preset), peft_config=_lora(preset),
                      train_dataset=Dataset.from_list(train_examples), eval_dataset=eval_ds, args=args)


def _warmup_kwargs(config_cls: type, ratio: float) -> dict[str, float]:
    """transformers >= 5.2x folds `warmup_ratio` into a float `warmup_steps`; older ones (vllm extra) have both."""
    import inspect

    if "warmup_ratio" in inspect.signature(config_cls.__init__).parameters:
        return {"warmup_ratio": ratio}
    return {"warmup_steps": ratio}


def _portable_adapter(out_dir: Path, preset_name: str) -> None:
    """Record the preset name, not the absolute base path; drop the pickled training args."""
    p = out_dir / "adapter_config.json"
    cfg = json.loads(p.read_text())
    cfg["base_model_name_or_path"] = f"reflectevo-preset:{preset_name}"
    write_json(p, cfg)
    (out_dir / "training_args.bin").unlink(missing_ok=True)
    (out_dir / "README.md").unlink(missing_ok=True)  # PEFT's card names the absolute base path; ours replaces it
