"""The offline settings' trainers: TRL SFTTrainer (one_stage, two_stage, sft_qa: completion-only loss) and
DPOTrainer (dpo_pm on D±, dpo_pref on Dpref), built the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reflectevo.config.presets import ModelPreset
from reflectevo.training.config import TrainConfig
from reflectevo.training.model import (
    _base_model,
    _common_args,
    _qlora_adapter_dtype,
    learning_rate,
    peft_config_for,
    train_method,
)


def build_offline_trainer(family: str, preset_name: str, preset: ModelPreset, train_examples: list[dict[str, Any]],
                          eval_examples: list[dict[str, Any]], cfg: TrainConfig, output_dir: Path,
                          save_checkpoints: bool = False):
    """TRL's SFTTrainer (`family` sft: prompt/completion data, completion-only loss) or DPOTrainer (dpo:
    prompt/chosen/rejected; the reference is the base with the adapter off, or with `train.method: full` a
    frozen copy TRL loads), on a fresh LoRA (or every weight) over the preset's base. `save_checkpoints`: a
    checkpoint every `save_steps` into `output_dir` (to resume from)."""
    import torch
    from datasets import Dataset

    from reflectevo.models.load import load_tokenizer

    if family == "sft":
        from trl import SFTConfig as Config, SFTTrainer as Trainer

        hp, extra_args, extra = cfg.sft, {"completion_only_loss": True}, {}
    else:
        from trl import DPOConfig as Config, DPOTrainer as Trainer

        hp, extra_args, extra = cfg.dpo, {"beta": cfg.dpo.beta}, {"ref_model": None}
    method = train_method(preset_name, preset, cfg.method)
    torch.manual_seed(cfg.seed)
    eval_ds = Dataset.from_list(eval_examples) if eval_examples else None
    args = Config(**_common_args(Config, hp, cfg.seed, learning_rate(family, method, preset, cfg), output_dir,
                                 eval_ds is not None, preset.dtype, save_checkpoints, cfg.gradient_checkpointing),
                  **extra_args)
    return _qlora_adapter_dtype(preset, Trainer(
        model=_base_model(preset_name, preset, method), processing_class=load_tokenizer(preset_name, preset),
        peft_config=peft_config_for(preset, method), train_dataset=Dataset.from_list(train_examples),
        eval_dataset=eval_ds, args=args, **extra))
