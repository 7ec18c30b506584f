"""Static vLLM LoRA compatibility of saved adapters (no vLLM here: loading in vLLM itself is checked by
bench/gpu_check_vllm_lora.py on a GPU machine). Synthetic tiny-random model, junk output."""

from __future__ import annotations

import json
import shutil

import pytest

from reflectevo.backends.vllm_lora import VLLM_LORA_MODULES, check_vllm_lora_compat

from reflectevo.training.model import _lora, _portable_adapter


@pytest.fixture(scope="module")
def adapter(tiny_preset, tmp_path_factory):
    """A PEFT adapter saved exactly as training saves it (our LoraConfig, then the portable rewrite),
    plus the base's HF config."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from reflectevo.models.load import resolve_model

    base = AutoModelForCausalLM.from_pretrained(resolve_model("tiny-random", tiny_preset), dtype=torch.float32)
    config = base.config.to_dict()
    out = tmp_path_factory.mktemp("adapter")
    get_peft_model(base, _lora(tiny_preset)).save_pretrained(out)
    _portable_adapter(out, "tiny-random")
    return out, config


def test_our_adapters_are_vllm_compatible_by_construction(adapter, tiny_preset):
    path, config = adapter
    res = check_vllm_lora_compat(path, max_lora_rank=16, base_config=config)
    assert res["compatible"], res["reasons"]
    assert res["r"] == tiny_preset.lora.r == 4 and res["min_max_lora_rank"] == 8
    assert res["target_modules"] == sorted(tiny_preset.lora.targets) and res["architecture"] == "LlamaForCausalLM"
    cfg = json.loads((path / "adapter_config.json").read_text())
    assert isinstance(cfg["target_modules"], list) and set(cfg["target_modules"]) <= set(VLLM_LORA_MODULES)
    assert not cfg.get("modules_to_save") and cfg["bias"] == "none" and not cfg.get("use_dora")

    from safetensors import safe_open

    with safe_open(str(path / "adapter_model.safetensors"), framework="pt") as f:
        names = list(f.keys())
        shapes = {n: f.get_slice(n).get_shape() for n in names}
    assert names and all(n.startswith("base_model.model.model.layers.") for n in names)
    a = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    b = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
    assert shapes[a] == [4, config["hidden_size"]] and shapes[b] == [config["hidden_size"], 4]  # A [r, in], B [out, r]


def _edit_config(path, **changes):
    cfg = json.loads((path / "adapter_config.json").read_text())
    cfg.update(changes)
    (path / "adapter_config.json").write_text(json.dumps(cfg))


def _edit_tensors(path, edit):
    from safetensors.torch import load_file, save_file

    tensors = load_file(path / "adapter_model.safetensors")
    save_file(edit(dict(tensors)), path / "adapter_model.safetensors")


@pytest.mark.parametrize("change,reason", [
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"use_dora": True}, "DoRA"),
    ({"bias": "all"}, "bias='all'"),
    ({"lora_bias": True}, "lora_bias"),
    ({"r": 32}, "max_lora_rank=32"),
    ({"target_modules": ["q_proj", "embed_tokens"]}, "no embeddings / lm_head"),
    ({"target_modules": ".*(q_proj|v_proj)$"}, "regex string"),
    ({"rank_pattern": {"q_proj": 8}}, "rank_pattern"),
    ({"peft_type": "IA3"}, "LoRA adapters only"),
])
def test_adapter_config_features_vllm_rejects(adapter, tmp_path, change, reason):
    path = shutil.copytree(adapter[0], tmp_path / "a")
    _edit_config(path, **change)
    res = check_vllm_lora_compat(path, max_lora_rank=16, base_config=adapter[1])
    assert not res["compatible"] and any(reason in r for r in res["reasons"]), res["reasons"]


def test_missing_required_fields(adapter, tmp_path):
    path = shutil.copytree(adapter[0], tmp_path / "a")
    cfg = json.loads((path / "adapter_config.json").read_text())
    del cfg["lora_alpha"]
    (path / "adapter_config.json").write_text(json.dumps(cfg))
    assert "adapter_config.json lacks 'lora_alpha' (vLLM requires it)" in check_vllm_lora_compat(path)["reasons"]
    (path / "adapter_config.json").unlink()
    assert not check_vllm_lora_compat(path)["compatible"]


def _first(tensors, suffix):
    return next(k for k in sorted(tensors) if k.endswith(suffix))


@pytest.mark.parametrize("edit,reason", [
    (lambda t: {**t, "base_model.model.lm_head.weight": next(iter(t.values())).clone()}, "not base_model.model.<module>"),
    (lambda t: {k.replace("base_model.model.", ""): v for k, v in t.items()}, "vLLM cannot parse it"),
    (lambda t: {k: v for k, v in t.items() if k != _first(t, "lora_B.weight")}, "must both be present"),
    (lambda t: {**t, _first(t, "lora_A.weight"): t[_first(t, "lora_A.weight")][:2]}, "are not A[r, in], B[out, r]"),
    (lambda t: {**t, _first(t, "lora_A.weight").replace("layers.0.", "layers.7."): t[_first(t, "lora_A.weight")].clone(),
                _first(t, "lora_B.weight").replace("layers.0.", "layers.7."): t[_first(t, "lora_B.weight")].clone()},
     "beyond the base's 2 layers"),
    (lambda t: {k.replace("q_proj", "qkv_proj"): v for k, v in t.items()}, "not listed in target_modules"),
])
def test_tensor_layouts_vllm_rejects(adapter, tmp_path, edit, reason):
    path = shutil.copytree(adapter[0], tmp_path / "a")
    _edit_tensors(path, edit)
    res = check_vllm_lora_compat(path, max_lora_rank=16, base_config=adapter[1])
    assert not res["compatible"] and any(reason in r for r in res["reasons"]), res["reasons"]


def test_the_base_must_match(adapter):
    path, config = adapter
    wider = {**config, "hidden_size": 2 * config["hidden_size"], "head_dim": None}
    res = check_vllm_lora_compat(path, base_config=wider)
    assert not res["compatible"] and any("do not match the base" in r for r in res["reasons"])
    res = check_vllm_lora_compat(path, base_config={**config, "architectures": ["GPT2LMHeadModel"]})
    assert not res["compatible"] and "architecture GPT2LMHeadModel" in res["reasons"][0]
    assert check_vllm_lora_compat(path)["compatible"]  # without the base: the adapter alone is fine
    res = check_vllm_lora_compat(path, max_lora_rank=10)
    assert not res["compatible"] and "not a value vLLM accepts" in res["reasons"][0]


def test_saved_adapter_config_does_not_depend_on_the_hash_seed(tiny_preset, tmp_path):
    """PEFT keeps target_modules in a set: without sorting, each process (PYTHONHASHSEED) saved them in
    another order, so the same training gave a different models/<setting> hash and reran evaluate."""
    import os
    import subprocess
    import sys

    from reflectevo.models.load import resolve_model

    base = resolve_model("tiny-random", tiny_preset)
    code = (
        "import sys, torch; from pathlib import Path; from peft import LoraConfig, get_peft_model; "
        "from transformers import AutoModelForCausalLM; from reflectevo.training.model import _portable_adapter; "
        "m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32); "
        "cfg = LoraConfig(r=4, lora_alpha=8, target_modules=sys.argv[3].split(','), task_type='CAUSAL_LM'); "
        "get_peft_model(m, cfg).save_pretrained(sys.argv[2]); _portable_adapter(Path(sys.argv[2]), 'tiny-random')"
    )
    targets = ",".join(tiny_preset.lora.targets)
    texts = []
    for seed in range(4):
        out = tmp_path / f"a{seed}"
        subprocess.run([sys.executable, "-c", code, str(base), str(out), targets], check=True,
                       env={**os.environ, "PYTHONHASHSEED": str(seed)})
        texts.append((out / "adapter_config.json").read_text())
    assert len(set(texts)) == 1
    assert json.loads(texts[0])["target_modules"] == sorted(tiny_preset.lora.targets)
