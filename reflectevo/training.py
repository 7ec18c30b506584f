"""Train the learning settings with TRL + PEFT (LoRA). The skeleton has `one_stage`.

one_stage: SFT on D+; input = the one-stage prompt (question, failed trial 1, failure notice, request to
reflect then answer), target = reflection + "Answer:" + trial-2 reasoning. The same prompt is used at
evaluation. Prompt/completion format, so the loss covers only the target tokens; the model's own
chat template renders both.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from reflectevo.config import ModelPreset, TrainConfig, to_dict
from reflectevo.jsonio import write_json, write_text
from reflectevo.prompts import one_stage_messages, one_stage_target
from reflectevo.tasks import Item, get_task


def row_item(row: dict[str, Any]) -> Item:
    return Item(id=row["item_id"], task=row["task"], question=row["question"], answer=row["answer"],
                choices=tuple(row["choices"]) if row.get("choices") else None)


def one_stage_examples(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    tasks: dict[str, Any] = {}
    out = []
    for row in rows:
        task = tasks.setdefault(row["task"], get_task(row["task"]))
        prompt = one_stage_messages(task, row_item(row), row["trial1"])
        completion = [{"role": "assistant", "content": one_stage_target(row["reflection"], row["trial2"])}]
        out.append({"prompt": prompt, "completion": completion})
    return out


def data_hash(rows: list[dict[str, Any]]) -> str:
    return hashlib.sha256("\n".join(json.dumps(r, sort_keys=True) for r in rows).encode()).hexdigest()[:16]


def write_card(out_dir: Path, card: dict[str, Any]) -> None:
    write_json(out_dir / "model_card.json", card)
    lines = [f"# {card['setting']} adapter", "", f"- status: **{card['status']}**",
             f"- base preset: `{card['base']['preset']}` ({card['base']['source']}, revision {card['base']['revision']})",
             f"- training rows: {card['n_train']} (eval {card['n_eval']}), data hash `{card['data_hash']}`"]
    if card.get("reason"):
        lines.append(f"- reason: {card['reason']}")
    lines += ["", "Load with `PeftModel.from_pretrained(base, this_dir)`; the base comes from the preset, "
              "never from an absolute path.", "", "```json", json.dumps(card["params"], indent=2), "```", ""]
    write_text(out_dir / "README.md", "\n".join(lines))


def train_sft(preset_name: str, preset: ModelPreset, model_fp: dict[str, str], train_rows: list[dict[str, Any]],
              eval_rows: list[dict[str, Any]], cfg: TrainConfig, out_dir: Path) -> dict[str, Any]:
    """Train a LoRA adapter into `out_dir`; with no rows, record 'no training data' instead."""
    out_dir.mkdir(parents=True, exist_ok=True)
    card: dict[str, Any] = {"setting": cfg.setting, "base": model_fp, "n_train": len(train_rows),
                            "n_eval": len(eval_rows), "data_hash": data_hash(train_rows + eval_rows),
                            "params": {"train": to_dict(cfg), "lora": to_dict(preset.lora), "lr": preset.lr_sft}}
    if not train_rows:
        card.update(status="no training data", reason="D+ is empty: no reflection fixed a trial-1 answer")
        write_card(out_dir, card)
        return {"trained": False, "n_train": 0, "n_eval": len(eval_rows), "reason": card["reason"]}

    trainer = build_sft_trainer(preset_name, preset, one_stage_examples(train_rows), one_stage_examples(eval_rows),
                                cfg, out_dir / "checkpoints")
    # TRL drops examples whose target was cut away entirely by truncation: say so instead of failing silently.
    dropped = len(train_rows) - len(trainer.train_dataset)
    card["dropped_by_truncation"] = dropped
    if len(trainer.train_dataset) == 0:
        card.update(status="no training data",
                    reason=f"all {len(train_rows)} D+ examples lose their target at max_length="
                           f"{min(cfg.max_length, preset.max_length)}; raise train.max_length")
        write_card(out_dir, card)
        return {"trained": False, "n_train": 0, "n_eval": len(eval_rows), "reason": card["reason"],
                "dropped_by_truncation": dropped}
    t0 = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - t0
    trainer.save_model(str(out_dir))
    _portable_adapter_config(out_dir, preset_name)
    (out_dir / "training_args.bin").unlink(missing_ok=True)  # pickles absolute paths
    import shutil

    shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    history = [h for h in trainer.state.log_history if "loss" in h]
    evals = [h for h in trainer.state.log_history if "eval_loss" in h]
    card.update(status="trained", steps=trainer.state.global_step, train_loss=round(result.training_loss, 4))
    write_card(out_dir, card)
    return {"trained": True, "n_train": len(train_rows), "n_eval": len(eval_rows), "dropped_by_truncation": dropped,
            "steps": trainer.state.global_step,
            "train_loss": round(result.training_loss, 4),
            "first_loss": round(history[0]["loss"], 4) if history else None,
            "last_loss": round(history[-1]["loss"], 4) if history else None,
            "eval_loss": round(evals[-1]["eval_loss"], 4) if evals else None, "seconds": round(seconds, 2)}


def build_sft_trainer(preset_name: str, preset: ModelPreset, train_examples: list[dict[str, Any]],
                      eval_examples: list[dict[str, Any]], cfg: TrainConfig, output_dir: Path):
    """A TRL SFTTrainer with a fresh LoRA on the preset's base; prompt/completion data -> completion-only loss."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from reflectevo.models import hub_revision, load_tokenizer, resolve_dtype, resolve_model

    torch.manual_seed(cfg.seed)
    tok = load_tokenizer(preset_name, preset)
    use_bf16 = resolve_dtype(preset.dtype) == torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(resolve_model(preset_name, preset), revision=hub_revision(preset),
                                                 dtype=torch.float32)
    lora = LoraConfig(r=preset.lora.r, lora_alpha=preset.lora.alpha, lora_dropout=preset.lora.dropout,
                      target_modules=list(preset.lora.targets), task_type="CAUSAL_LM")
    eval_ds = Dataset.from_list(eval_examples) if eval_examples else None
    args = SFTConfig(
        **_warmup_kwargs(SFTConfig, cfg.warmup_ratio),
        output_dir=str(output_dir), num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=preset.lr_sft,
        max_length=min(cfg.max_length, preset.max_length), logging_steps=1, save_strategy="no",
        eval_strategy="epoch" if eval_ds is not None else "no", report_to="none", seed=cfg.seed,
        use_cpu=not torch.cuda.is_available(), bf16=use_bf16, gradient_checkpointing=False,
        dataloader_num_workers=0, disable_tqdm=True, completion_only_loss=True,
    )
    return SFTTrainer(model=model, processing_class=tok, peft_config=lora, train_dataset=Dataset.from_list(train_examples),
                      eval_dataset=eval_ds, args=args)


def _warmup_kwargs(config_cls: type, ratio: float) -> dict[str, float]:
    """transformers >= 5.2x folds `warmup_ratio` into a float `warmup_steps`; older ones (vllm extra) have both."""
    import inspect

    if "warmup_ratio" in inspect.signature(config_cls.__init__).parameters:
        return {"warmup_ratio": ratio}
    return {"warmup_steps": ratio}


def _portable_adapter_config(out_dir: Path, preset_name: str) -> None:
    """Record the preset name, not the absolute base path, in the saved adapter."""
    p = out_dir / "adapter_config.json"
    cfg = json.loads(p.read_text())
    cfg["base_model_name_or_path"] = f"reflectevo-preset:{preset_name}"
    write_json(p, cfg)
