"""DPO settings (dpo_pm on D±, dpo_pref on Dpref): TRL DPOTrainer."""

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


def build_dpo_trainer(preset_name: str, preset: ModelPreset, train_examples: list[dict[str, Any]],
                      eval_examples: list[dict[str, Any]], cfg: TrainConfig, output_dir: Path,
                      save_checkpoints: bool = False):
    """TRL DPOTrainer with a LoRA policy; the reference is the base (adapter off), as in the paper. With
    `train.method: full` every weight trains and TRL loads a frozen copy of the base as the reference."""
    import torch
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from reflectevo.models import load_tokenizer

    method = train_method(preset_name, preset, cfg.method)
    lr = preset.lr_dpo
    torch.manual_seed(cfg.seed)
    eval_ds = Dataset.from_list(eval_examples) if eval_examples else None
    args = DPOConfig(**_common_args(DPOConfig, cfg.dpo, cfg.seed, lr, output_dir, eval_ds is not None,
                                    preset.dtype, save_checkpoints, cfg.gradient_checkpointing), beta=cfg.dpo.beta)
    return _qlora_adapter_dtype(preset, DPOTrainer(
        model=_base_model(preset_name, preset), ref_model=None, processing_class=load_tokenizer(preset_name, preset),
        peft_config=peft_config_for(preset, method), train_dataset=Dataset.from_list(train_examples), eval_dataset=eval_ds, args=args))
