"""Static check of a saved PEFT adapter against vLLM's LoRA loader."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from reflectevo.config.presets import ModelPreset

VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm.config.lora.MaxLoRARanks (0.3x)
VLLM_LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VLLM_LORA_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
                           "GemmaForCausalLM", "Gemma2ForCausalLM")
_LORA_TENSOR = re.compile(r"base_model\.model\.(?P<module>.+)\.lora_(?P<ab>[AB])\.weight")
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def _expected_shapes(config: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """(in, out) features of each projection of a Llama-family decoder, from its HF config."""
    try:
        hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        kv = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or hidden // heads)
        inter = int(config["intermediate_size"])
    except (KeyError, TypeError, ValueError):
        return {}
    return {"q_proj": (hidden, heads * head_dim), "k_proj": (hidden, kv * head_dim), "v_proj": (hidden, kv * head_dim),
            "o_proj": (heads * head_dim, hidden), "gate_proj": (hidden, inter), "up_proj": (hidden, inter),
            "down_proj": (inter, hidden)}


def check_vllm_lora_compat(adapter_dir: Path | str, max_lora_rank: int = 16,
                           base_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check a saved PEFT adapter against what vLLM's LoRA loader (0.3x: `PEFTHelper`, `LoRAModel.
    from_local_checkpoint`) accepts: `r` <= `max_lora_rank` (one of vLLM's allowed values), `lora_alpha`,
    `target_modules` a list of projections vLLM can wrap for Llama-family models; no `modules_to_save`,
    DoRA, bias, LoRA bias or per-module rank/alpha patterns (vLLM ignores those: wrong scaling); tensors all
    `base_model.model.<module>.lora_A|B.weight` with A [r, in] and B [out, r] (and, given the base's HF
    `config.json` dict, `in`/`out`/layer indices that fit it and an architecture in
    `VLLM_LORA_ARCHITECTURES`). Static only: loading in vLLM is verified by `bench/gpu_check_vllm_lora.py`.

    Returns `{"compatible", "reasons", "r", "max_lora_rank", "min_max_lora_rank", "target_modules",
    "architecture"}`; `min_max_lora_rank` is the smallest `max_lora_rank` vLLM would need."""
    adapter_dir = Path(adapter_dir)
    reasons: list[str] = []
    out: dict[str, Any] = {"compatible": False, "reasons": reasons, "r": None, "max_lora_rank": max_lora_rank,
                           "min_max_lora_rank": None, "target_modules": [], "architecture": None}
    if max_lora_rank not in VLLM_MAX_LORA_RANKS:
        reasons.append(f"max_lora_rank={max_lora_rank} is not a value vLLM accepts {VLLM_MAX_LORA_RANKS}")
    try:
        cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    except (OSError, ValueError) as e:
        reasons.append(f"adapter_config.json unreadable ({e.__class__.__name__})")
        return out
    if cfg.get("peft_type", "LORA") != "LORA":
        reasons.append(f"peft_type {cfg.get('peft_type')!r}: vLLM loads LoRA adapters only")
    for k in ("r", "lora_alpha", "target_modules"):
        if k not in cfg:
            reasons.append(f"adapter_config.json lacks {k!r} (vLLM requires it)")
    r = cfg.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        reasons.append(f"r={r!r} is not a positive integer")
        r = None
    else:
        out["r"] = r
        out["min_max_lora_rank"] = next((v for v in VLLM_MAX_LORA_RANKS if v >= r), None)
        if r > max_lora_rank:
            need = out["min_max_lora_rank"]
            reasons.append(f"rank {r} > max_lora_rank {max_lora_rank}"
                           + (f" (start vLLM with max_lora_rank={need})" if need else " (above vLLM's largest, 512)"))
    if "lora_alpha" in cfg and not isinstance(cfg["lora_alpha"], (int, float)):
        reasons.append(f"lora_alpha={cfg['lora_alpha']!r} is not a number")
    targets = cfg.get("target_modules")
    if isinstance(targets, str):
        reasons.append("target_modules is a regex string; write it as a list of module names")
        targets = []
    elif isinstance(targets, list):
        bad = sorted(t for t in targets if str(t).rsplit(".", 1)[-1] not in VLLM_LORA_MODULES)
        if bad:
            reasons.append(f"target_modules {bad}: vLLM's LoRA wraps only {', '.join(VLLM_LORA_MODULES)} "
                           "(no embeddings / lm_head)")
    else:
        targets = []
    if cfg.get("modules_to_save"):
        reasons.append(f"modules_to_save={cfg['modules_to_save']}: vLLM supports only none")
    if cfg.get("use_dora"):
        reasons.append("use_dora: vLLM does not support DoRA")
    if cfg.get("bias", "none") != "none":
        reasons.append(f"bias={cfg['bias']!r}: vLLM needs 'none'")
    if cfg.get("lora_bias"):
        reasons.append("lora_bias: vLLM loads no LoRA bias")
    for k in ("rank_pattern", "alpha_pattern"):
        if cfg.get(k):
            reasons.append(f"{k} is ignored by vLLM (per-module ranks/scales would be wrong)")
    for k in ("layer_replication", "target_parameters", "trainable_token_indices"):
        if cfg.get(k):
            reasons.append(f"{k}: not supported by vLLM's LoRA loader")

    arch = None
    expected: dict[str, tuple[int, int]] = {}
    n_layers = None
    if base_config:
        arch = (base_config.get("architectures") or [None])[0]
        out["architecture"] = arch
        if arch not in VLLM_LORA_ARCHITECTURES:
            reasons.append(f"architecture {arch}: not one this check knows vLLM's LoRA module names for "
                           f"({', '.join(VLLM_LORA_ARCHITECTURES)}); try bench/gpu_check_vllm_lora.py")
        expected = _expected_shapes(base_config)
        n_layers = base_config.get("num_hidden_layers")

    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        reasons.append("no adapter_model.safetensors")
        return {**out, "compatible": False}
    from safetensors import safe_open

    modules: dict[str, dict[str, tuple[int, ...]]] = {}
    with safe_open(str(weights), framework="pt") as f:
        for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            m = _LORA_TENSOR.fullmatch(name)
            if not m:
                reasons.append(f"tensor {name}: not base_model.model.<module>.lora_A|B.weight (vLLM cannot parse it)")
                continue
            modules.setdefault(m["module"], {})[m["ab"]] = tuple(f.get_slice(name).get_shape())
    if not modules and not any(x.startswith("tensor ") for x in reasons):
        reasons.append("adapter_model.safetensors holds no LoRA tensors")
    leaves = set()
    for module, ab in sorted(modules.items()):
        leaf = module.rsplit(".", 1)[-1]
        leaves.add(leaf)
        if leaf not in VLLM_LORA_MODULES:
            reasons.append(f"{module}: vLLM has no LoRA for module {leaf!r}")
            continue
        if set(ab) != {"A", "B"}:
            reasons.append(f"{module}: lora_A and lora_B must both be present")
            continue
        a, b = ab["A"], ab["B"]
        if len(a) != 2 or len(b) != 2 or (r is not None and (a[0] != r or b[1] != r)) or a[0] != b[1]:
            reasons.append(f"{module}: shapes A{list(a)} B{list(b)} are not A[r, in], B[out, r] with r={r}")
            continue
        if leaf in expected and (a[1], b[0]) != expected[leaf]:
            reasons.append(f"{module}: in/out {a[1]}/{b[0]} do not match the base ({expected[leaf][0]}/"
                           f"{expected[leaf][1]})")
        layer = _LAYER.search(module)
        if n_layers is not None and layer and int(layer.group(1)) >= int(n_layers):
            reasons.append(f"{module}: layer {layer.group(1)} beyond the base's {n_layers} layers")
    if targets and leaves - {str(t).rsplit(".", 1)[-1] for t in targets}:
        reasons.append(f"tensors for {sorted(leaves - set(targets))} not listed in target_modules")
    out["target_modules"] = sorted(leaves)
    if len(reasons) > 12:
        reasons[12:] = [f"... and {len(reasons) - 12} more"]
    return {**out, "compatible": not reasons}


def _base_config(preset_name: str, preset: ModelPreset) -> dict[str, Any] | None:
    """The base's HF config as a dict (local folder or the hub cache the training just used), or None."""
    try:
        from transformers import AutoConfig

        from reflectevo.models.load import hub_revision, resolve_model

        return AutoConfig.from_pretrained(resolve_model(preset_name, preset), revision=hub_revision(preset)).to_dict()
    except Exception:  # noqa: BLE001 - the check then skips the shape comparison and says nothing wrong
        return None
