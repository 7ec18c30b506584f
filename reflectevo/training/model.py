"""The base model (in the resolved dtype under LoRA on CUDA, fp32 on a CPU and for full fine-tuning, or NF4 for
QLoRA), the frozen base replica, the LoRA config, the TrainingArguments shared by every trainer,
the portable adapter rewrite, and the sharded-launcher checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from reflectevo.config.presets import ModelPreset
from reflectevo.training.config import TrainConfig
from reflectevo.errors import ReflectEvoError
from reflectevo.jsonio import write_json


def _tokens_per_s(trainer, hp, seconds: float, steps: int) -> float | None:
    """Training tokens per second over all processes: tokens per example x examples processed (steps x
    per-device batch x accumulation x processes; `TrainingArguments.world_size` is the process count)."""
    ds = trainer.train_dataset
    cols = [c for c in ("input_ids", "prompt_ids", "chosen_ids", "rejected_ids") if c in ds.column_names]
    if not cols or not seconds or len(ds) == 0 or steps <= 0:
        return None
    per_example = sum(len(x) for c in cols for x in ds[c]) / len(ds)
    examples_seen = steps * hp.batch_size * hp.grad_accum * max(1, int(getattr(trainer.args, "world_size", 1) or 1))
    return round(per_example * examples_seen / seconds, 1)


def sharded_launcher(env: dict[str, str] | None = None) -> str:
    """"fsdp", "zero3" or "" (not sharded): how `accelerate launch` started this process, read from the
    environment it sets (accelerate/utils/launch.py: ACCELERATE_USE_FSDP with FSDP_VERSION;
    ACCELERATE_USE_DEEPSPEED with ACCELERATE_DEEPSPEED_ZERO_STAGE or a DeepSpeed config file)."""
    import os

    env = os.environ if env is None else env
    if env.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return "fsdp"
    if env.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        stage = env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
        if stage is None and env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none") not in ("", "none"):
            try:
                stage = json.loads(Path(env["ACCELERATE_DEEPSPEED_CONFIG_FILE"]).read_text()).get(
                    "zero_optimization", {}).get("stage")
            except (OSError, ValueError):
                stage = None
        return "zero3" if str(stage) == "3" else ""
    return ""


def qlora_config(dtype: Any, sharding: str = "") -> dict[str, Any]:
    """`BitsAndBytesConfig` keyword arguments for QLoRA (NF4, double quantization).

    - `bnb_4bit_compute_dtype` is the preset's resolved dtype (`models.resolve_dtype`: bf16 only where the
      GPU has it natively, fp16 on pre-Ampere GPUs, or what the preset names).
    - Under FSDP or ZeRO-3 the 4-bit weights are stored in that same float dtype
      (`bnb_4bit_quant_storage`, bitsandbytes' FSDP-QLoRA recipe): both shard float tensors of one dtype
      only, and accelerate 1.15's FSDP2 leaves uint8-stored 4-bit weights unsharded
      (accelerate/utils/fsdp_utils.py `fsdp2_prepare_model`: "non-floating frozen Params4bit")."""
    kw: dict[str, Any] = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                          "bnb_4bit_compute_dtype": dtype}
    if sharding:
        kw["bnb_4bit_quant_storage"] = dtype
    return kw


def refuse_unshardable_4bit(model, sharding: str, preset_name: str) -> None:
    """Under FSDP / ZeRO-3, stop with one error if a 4-bit weight is stored in an integer dtype (accelerate
    would leave it out of sharding with only a warning; it identifies them the same way: class name
    `Params4bit`, frozen, not floating point)."""
    from reflectevo.errors import ReflectEvoError

    if not sharding:
        return
    bad = [n for n, p in model.named_parameters()
           if p.__class__.__name__ == "Params4bit" and not p.requires_grad and not p.is_floating_point()]
    if bad:
        raise ReflectEvoError(
            f"models.{preset_name}.quantization: 4bit under {sharding}: {len(bad)} 4-bit weights (e.g. {bad[0]}) are "
            "stored as integers, which FSDP / ZeRO-3 cannot shard; they need bnb_4bit_quant_storage set to the "
            "model's float dtype (bitsandbytes >= 0.43); upgrade bitsandbytes or train without the sharded launcher")


def _adapter_params_to(model, dtype) -> None:
    """Cast the trainable (LoRA) weights to `dtype`: TRL puts them in bf16 on quantized models, which a GPU
    without native bf16 (pre-Ampere) cannot run fast; there they stay float32."""
    for _, param in model.named_parameters():
        if param.requires_grad and param.dtype != dtype:
            param.data = param.data.to(dtype)


def train_dtype(preset: ModelPreset, method: str = "lora"):
    """The dtype the trained model's weights are loaded in. LoRA on CUDA: the preset's resolved dtype
    (`models.resolve_dtype`: bf16 on Ampere and later), since the base is frozen and the adapters stay float32
    (PEFT's `autocast_adapter_dtype`): an 8B base takes 16 GB instead of 32. Full fine-tuning: float32 master
    weights, computed in bf16 by the trainer's autocast (`bf16` in the training arguments). On a CPU: float32
    (the CPU runs bf16 through autocast where it is fast)."""
    import torch

    from reflectevo.models.load import resolve_dtype

    if method == "lora" and torch.cuda.is_available():
        return resolve_dtype(preset.dtype)
    return torch.float32


def frozen_base(preset_name: str, preset: ModelPreset):
    """The base model as a frozen replica beside the trained one (the retry model of `grpo_reflect_retry` with
    `retry_by: base` under full fine-tuning): in the preset's resolved dtype on CUDA, whole on every rank.

    Build it before the trainer's arguments: those switch on DeepSpeed ZeRO-3's partitioned loading for every
    later `from_pretrained` (transformers/training_args.py: `DeepSpeedPlugin.set_deepspeed_weakref`), which
    would leave this replica, never wrapped by the trainer, holding empty shards. FSDP's RAM-efficient loading
    (weights on rank 0 only, broadcast when the trainer wraps the model: transformers `is_fsdp_enabled`) is
    turned off while it loads, for the same reason. Move it to the trainer's device once the trainer exists."""
    import os

    import torch
    from transformers import AutoModelForCausalLM

    from reflectevo.models.load import hub_revision, resolve_dtype, resolve_model

    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():   # an earlier trainer's arguments in this process may still hold it
        import gc

        gc.collect()
        if is_deepspeed_zero3_enabled():
            raise ReflectEvoError(f"models.{preset_name}: the frozen retry model must load whole, but DeepSpeed ZeRO-3's "
                                  "partitioned loading is on in this process (a trainer's arguments are alive); build "
                                  "it before the trainer's arguments")
    dtype = resolve_dtype(preset.dtype) if torch.cuda.is_available() else torch.float32
    key = "FSDP_CPU_RAM_EFFICIENT_LOADING"
    before = os.environ.get(key)
    os.environ[key] = "false"
    try:
        model = AutoModelForCausalLM.from_pretrained(resolve_model(preset_name, preset), revision=hub_revision(preset),
                                                     dtype=dtype)
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before
    return model.eval().requires_grad_(False)


def _base_model(preset_name: str, preset: ModelPreset, method: str = "lora"):
    """The base to train, in `train_dtype` (LoRA on CUDA: the resolved dtype; else float32), or with
    `quantization: 4bit` an NF4 base prepared for QLoRA (GPU only). Build the trainer's arguments first (DeepSpeed
    ZeRO-3 then loads it partitioned, see `frozen_base`)."""
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM

    from reflectevo.errors import ReflectEvoError
    from reflectevo.models.load import hub_revision, resolve_model

    if preset.quantization == "4bit":
        if not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None:
            raise ReflectEvoError(f"models.{preset_name}.quantization: 4bit (QLoRA) needs a CUDA GPU and bitsandbytes "
                                  "(pip install '.[qlora]'); set it to none on this machine")
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        from reflectevo.models.load import resolve_dtype

        dtype, sharding = resolve_dtype(preset.dtype), sharded_launcher()
        model = AutoModelForCausalLM.from_pretrained(resolve_model(preset_name, preset), revision=hub_revision(preset),
                                                     quantization_config=BitsAndBytesConfig(**qlora_config(dtype, sharding)),
                                                     dtype=dtype)
        if sharding:  # one float dtype throughout (no fp32 upcast of norms), as FSDP / ZeRO-3 need
            refuse_unshardable_4bit(model, sharding, preset_name)
            for param in model.parameters():
                param.requires_grad = False
            return model
        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return AutoModelForCausalLM.from_pretrained(resolve_model(preset_name, preset), revision=hub_revision(preset),
                                                dtype=train_dtype(preset, method))


def _qlora_adapter_dtype(preset: ModelPreset, trainer):
    """QLoRA on a GPU without native bf16: TRL's bf16 LoRA weights back to float32 (see `_adapter_params_to`)."""
    import torch

    from reflectevo.models.load import resolve_dtype

    if preset.quantization == "4bit" and resolve_dtype(preset.dtype) != torch.bfloat16:
        _adapter_params_to(trainer.model, torch.float32)
    return trainer


def _lora(preset: ModelPreset):
    from peft import LoraConfig

    return LoraConfig(r=preset.lora.r, lora_alpha=preset.lora.alpha, lora_dropout=preset.lora.dropout,
                      target_modules=list(preset.lora.targets), task_type="CAUSAL_LM")


def _common_args(config_cls: type, hp, seed: int, lr: float, output_dir: Path, has_eval: bool,
                 dtype_name: str, save_checkpoints: bool = False, gradient_checkpointing: bool = False
                 ) -> dict[str, Any]:
    import torch

    from reflectevo.models.load import resolve_dtype

    save = ({"save_strategy": "steps", "save_steps": hp.save_steps, "save_total_limit": hp.save_total_limit}
            if save_checkpoints and hp.save_steps > 0 else {"save_strategy": "no"})
    return dict(
        **_warmup_kwargs(config_cls, hp.warmup_ratio), **save,
        output_dir=str(output_dir), num_train_epochs=hp.epochs, max_steps=hp.max_steps,
        per_device_train_batch_size=hp.batch_size, per_device_eval_batch_size=hp.batch_size,
        gradient_accumulation_steps=hp.grad_accum, learning_rate=lr, lr_scheduler_type=hp.lr_scheduler,
        weight_decay=hp.weight_decay, max_length=hp.max_length, logging_steps=1,
        eval_strategy="epoch" if has_eval else "no", report_to="none", seed=seed,
        use_cpu=not torch.cuda.is_available(), bf16=resolve_dtype(dtype_name) == torch.bfloat16,
        **_checkpointing_kwargs(config_cls, gradient_checkpointing), dataloader_num_workers=0, disable_tqdm=True,
    )


def _checkpointing_kwargs(config_cls: type, on: bool) -> dict[str, bool]:
    """transformers >= 5.2x renames `gradient_checkpointing` to `activation_checkpointing` (the old name warns:
    transformers/training_args.py, `__post_init__`); older ones (vllm extra) have only the old name."""
    import inspect

    if "activation_checkpointing" in inspect.signature(config_cls.__init__).parameters:
        return {"activation_checkpointing": on}
    return {"gradient_checkpointing": on}


def _warmup_kwargs(config_cls: type, ratio: float) -> dict[str, float]:
    """transformers >= 5.2x folds `warmup_ratio` into a float `warmup_steps`; older ones (vllm extra) have both."""
    import inspect

    if "warmup_ratio" in inspect.signature(config_cls.__init__).parameters:
        return {"warmup_ratio": ratio}
    return {"warmup_steps": ratio}


def _portable_adapter(out_dir: Path, preset_name: str) -> None:
    """Record the preset name, not the absolute base path; drop the pickled training args; list
    `target_modules` sorted (PEFT keeps them in a set, so their saved order follows PYTHONHASHSEED and
    the same training run would otherwise give a different adapter folder hash in each process)."""
    p = out_dir / "adapter_config.json"
    cfg = json.loads(p.read_text())
    cfg["base_model_name_or_path"] = f"reflectevo-preset:{preset_name}"
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
    write_json(p, cfg)
    (out_dir / "training_args.bin").unlink(missing_ok=True)
    (out_dir / "README.md").unlink(missing_ok=True)  # PEFT's card names the absolute base path; ours replaces it


# --------------------------------------------------------------------------------------------------
# LoRA or full-parameter training


def train_method(preset_name: str, preset: ModelPreset, method: str) -> str:
    """`lora` or `full` for `train.method` (`auto`: the preset's `train_method`). Full fine-tuning saves every
    weight, which the packaged GGUF preset cannot give a usable copy of: it is refused there with one line."""
    from reflectevo.errors import ReflectEvoError

    resolved = preset.train_method if method == "auto" else method
    if resolved == "full" and preset.source == "gguf-package":
        raise ReflectEvoError(
            f"train.method: full on preset {preset_name!r}: its weights are the packaged GGUF ({preset.file}, "
            "quantized), which cannot be saved in full; convert it first (python -c \"from reflectevo.models.build import "
            f"convert_gguf_package as c; print(c({preset.package!r}, {preset.file!r}, {preset.package_version!r}))\") and "
            "point a source: hub preset's path at that folder, or use train.method: lora")
    if resolved == "full" and preset.quantization == "4bit":
        raise ReflectEvoError(f"train.method: full on preset {preset_name!r}: quantization 4bit trains adapters "
                              "only (QLoRA); set quantization: none for full fine-tuning")
    return resolved


def peft_config_for(preset: ModelPreset, method: str):
    """The LoRA config, or None for full-parameter training (every weight trainable)."""
    return _lora(preset) if method == "lora" else None


def _portable_model(out_dir: Path, preset_name: str, tokenizer) -> None:
    """A full-parameter save made standalone: the tokenizer beside the weights (so `from_pretrained(folder)`
    and every backend load it alone), the preset name instead of a local base path, no pickled args."""
    tokenizer.save_pretrained(str(out_dir))
    p = out_dir / "config.json"
    cfg = json.loads(p.read_text())
    cfg["_name_or_path"] = f"reflectevo-preset:{preset_name}"
    write_json(p, cfg)
    (out_dir / "training_args.bin").unlink(missing_ok=True)
    (out_dir / "README.md").unlink(missing_ok=True)


def learning_rate(kind: str, method: str, preset: ModelPreset, cfg: TrainConfig) -> float:
    """sft: the preset's lr_sft (LoRA) or lr_full; dpo: lr_dpo; rl: train.rl.lr."""
    if kind == "rl":
        return cfg.rl.lr
    if kind == "dpo":
        return preset.lr_dpo
    return preset.lr_sft if method == "lora" else preset.lr_full


def load_adapter_weights(model: Any, adapter_dir: Path) -> int:
    """Copy a saved LoRA adapter's weights into `model`'s (PEFT) adapter; returns the tensors loaded."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(adapter_dir) / "adapter_model.safetensors"
    if not path.exists():
        raise ReflectEvoError(f"{adapter_dir}: no adapter_model.safetensors to continue from (evolve.init: previous)")
    state = load_file(str(path))
    result = set_peft_model_state_dict(model, state)
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if unexpected:
        raise ReflectEvoError(f"{adapter_dir}: {len(unexpected)} adapter tensors do not fit this model "
                              f"(e.g. {unexpected[0]}); evolve.init: previous needs the same preset and LoRA config")
    return len(state)
