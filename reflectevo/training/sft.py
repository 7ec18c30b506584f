"""SFT settings (one_stage, two_stage, sft_qa): TRL SFTTrainer, completion-only loss."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reflectevo.config import ModelPreset, TrainConfig
from reflectevo.training.model import (
    _base_model,
    _common_args,
    _qlora_adapter_dtype,
    peft_config_for,
    train_method,
)


def build_sft_trainer(preset_name: str, preset: ModelPreset, train_examples: list[dict[str, Any]],
                      eval_examples: list[dict[str, Any]], cfg: TrainConfig, output_dir: Path,
                      save_checkpoints: bool = False):
    """TRL SFTTrainer, fresh LoRA on the base (or every weight: `train.method: full`); prompt/completion data ->
    completion-only loss.
    `save_checkpoints`: a checkpoint every `train.sft.save_steps` into `output_dir` (to resume from)."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from reflectevo.models import load_tokenizer

    method = train_method(preset_name, preset, cfg.method)
    lr = preset.lr_sft if method == "lora" else preset.lr_full
    torch.manual_seed(cfg.seed)
    eval_ds = Dataset.from_list(eval_examples) if eval_examples else None
    args = SFTConfig(**_common_args(SFTConfig, cfg.sft, cfg.seed, lr, output_dir, eval_ds is not None,
                                    preset.dtype, save_checkpoints, cfg.gradient_checkpointing), completion_only_loss=True)
    return _qlora_adapter_dtype(preset, SFTTrainer(
        model=_base_model(preset_name, preset), processing_class=load_tokenizer(preset_name, preset),
        peft_config=peft_config_for(preset, method), train_dataset=Dataset.from_list(train_examples), eval_dataset=eval_ds, args=args))
