"""A preset made loadable: its folder (or hub id), tokenizer and model, and the dtype rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reflectevo.config.presets import ModelPreset
from reflectevo.errors import ReflectEvoError
from reflectevo.models.build import build_tiny_random, convert_gguf_package
from reflectevo.models.hub import resolve_hub


def resolve_model(name: str, preset: ModelPreset, weights: bool = True) -> str:
    """Return a path (or hub id) that `from_pretrained` can load for this preset.

    A hub preset resolves, in order, to its `path:`, to its revision's snapshot in the local Hugging Face
    cache (no network), or to the hub id once a single short request showed the hub has it; otherwise it
    stops with one line (see `hub_unavailable`). `weights=False`: only the tokenizer is needed."""
    if preset.source == "tiny-random":
        return str(build_tiny_random(preset.seed))
    if preset.source == "gguf-package":
        return str(convert_gguf_package(preset.package, preset.file, preset.package_version))
    if preset.path:
        p = Path(preset.path).expanduser()
        if not p.exists():
            raise ReflectEvoError(f"models.{name}.path: {p} does not exist")
        return str(p)
    if preset.source != "hub":
        return preset.hub_id
    return resolve_hub(name, preset, weights)


def check_available(name: str, preset: ModelPreset) -> str:
    """Resolve a preset before a stage writes anything, so an unreachable model fails in seconds with one
    line. An `openai`-backend preset needs at most its tokenizer (completions mode renders prompts here);
    the weights live behind the endpoint. Returns the resolved folder or id ('' when nothing is local)."""
    if preset.backend == "scripted":
        return ""
    if preset.backend == "openai":
        chat = preset.api_mode == "chat" or (preset.api_mode == "auto" and preset.source == "api")
        return "" if chat else resolve_model(name, preset, weights=False)
    return resolve_model(name, preset)


def hub_revision(preset: ModelPreset) -> str | None:
    return preset.revision if preset.source == "hub" and not preset.path else None


def resolve_dtype(dtype: str) -> Any:
    """torch dtype for a preset's `dtype`. `auto`: on CUDA bf16 where the GPU has it natively (Ampere and
    later), else fp16 (`torch.cuda.is_bf16_supported()` alone also says yes for an emulated bf16 on older
    GPUs); on a CPU bf16 where it is fast (AVX512-BF16/AMX), else fp32."""
    import torch

    if dtype == "float32":
        return torch.float32
    if dtype == "bfloat16":
        return torch.bfloat16
    if dtype == "float16":
        return torch.float16
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


def cpu_has_fast_bf16() -> bool:
    """The CPU computes bf16 in hardware (AVX512-BF16 or AMX). oneDNN's own check
    (`torch.ops.mkldnn._is_mkldnn_bf16_supported`) also says yes on AVX512 CPUs without those instructions,
    where bf16 is emulated and slower than fp32 (a 64x576x1536 linear: 4.3 ms bf16 vs 1.6 ms fp32 on an
    AVX512 Xeon without AVX512-BF16)."""
    import torch

    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except Exception:
        return False


def load_tokenizer(name: str, preset: ModelPreset):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model(name, preset, weights=False), revision=hub_revision(preset))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def is_full_model(folder: str | Path | None) -> bool:
    """A full-parameter save (`train.method: full`: config + weights, no adapter_config.json), not a LoRA adapter."""
    return folder is not None and (Path(folder) / "config.json").is_file() \
        and not (Path(folder) / "adapter_config.json").exists()


def load_model(name: str, preset: ModelPreset, adapter: str | Path | None = None, dtype: Any = None):
    """Load base weights (+ a LoRA adapter merged in) for inference; a full-parameter save in `adapter`'s
    place (`is_full_model`) is loaded instead of the base."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = dtype or resolve_dtype(preset.dtype)
    if is_full_model(adapter):
        model = AutoModelForCausalLM.from_pretrained(str(adapter), dtype=dtype)
        adapter = None
    else:
        model = AutoModelForCausalLM.from_pretrained(resolve_model(name, preset), revision=hub_revision(preset),
                                                     dtype=dtype)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    model.eval()
    if torch.cuda.is_available():
        model.to("cuda")
    return model
