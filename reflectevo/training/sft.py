"""SFT settings (one_stage, two_stage, sft_qa): TRL SFTTrainer, completion-only loss."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reflectevo.config import ModelPreset, TrainConfig
from reflectevo.training.model import _base_model, _common_args, _lora, _qlora_adapter_dtype


def build_sft_trainer(preset_name: str, preset: ModelPreset, train_examples: list[dict[str, Any]],
                      eval_examples: list[dict[str, Any]], cfg: TrainConfig, output_dir: Path,
                      save_checkpoints: bool = False):
    """TRL SFTTrainer, fresh LoRA on the base; prompt/completion data -> completion-only loss.
    `save_checkpoints`: a checkpoint every `train.sft.save_steps` into `output_dir` (to resume from)."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from reflectevo.models import load_tokenizer

    torch.manual_seed(cfg.seed)
    eval_ds = Dataset.from_list(eval_examples) if eval_examples else None
    args = SFTConfig(**_common_args(SFTConfig, cfg.sft, cfg.seed, preset.lr_sft, output_dir, eval_ds is not None,
                                    preset.dtype, save_checkpoints), completion_only_loss=True)
    return _qlora_adapter_dtype(preset, SFTTrainer(
        model=_base_model(preset_name, preset), processing_class=load_tokenizer(preset_name, preset),
        peft_config=_lora(preset), train_dataset=Dataset.from_list(train_examples), eval_dataset=eval_ds, args=args))
