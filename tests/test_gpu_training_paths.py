"""GPU training paths checked on the CPU with stand-ins that follow the real APIs: the QLoRA config follows
the resolved dtype and the launcher, dtype `auto` on a pre-Ampere GPU is fp16, FSDP / ZeRO-3 get float
storage for the 4-bit weights, tokens/s counts every process, and the multi-GPU extras exist."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import tomllib
from pathlib import Path

import pytest
import torch

from reflectevo.errors import ReflectEvoError
from reflectevo.training.model import qlora_config, refuse_unshardable_4bit, sharded_launcher

ROOT = Path(__file__).resolve().parents[1]


def _gpu(monkeypatch, major: int) -> None:
    """A CUDA machine of compute capability `major`, as torch reports it: `is_bf16_supported(including_emulation=True)`
    (torch/cuda/__init__.py:191-211) is True from major 8 on, and below that only with emulation allowed."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: major >= 8 or including_emulation)


def test_auto_dtype_on_a_gpu_without_native_bf16_is_fp16(monkeypatch):
    from reflectevo.models.load import resolve_dtype

    _gpu(monkeypatch, 7)       # V100 / T4: bf16 only emulated
    assert resolve_dtype("auto") == torch.float16
    _gpu(monkeypatch, 8)       # A100 and later
    assert resolve_dtype("auto") == torch.bfloat16
    assert resolve_dtype("float32") == torch.float32


def test_auto_dtype_on_a_cpu_is_bf16_only_where_the_cpu_computes_it(monkeypatch):
    """torch.cpu reports the instructions (torch/cpu/__init__.py: `_is_avx512_bf16_supported`, `_is_amx_tile_supported`);
    oneDNN's bf16 check says yes on any AVX512 CPU, where bf16 without those instructions is emulated and slower."""
    from reflectevo.models.load import resolve_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    for avx512_bf16, amx, expected in ((False, False, torch.float32), (True, False, torch.bfloat16),
                                       (False, True, torch.bfloat16)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert resolve_dtype("auto") == expected
    assert resolve_dtype("bfloat16") == torch.bfloat16


def test_the_launcher_is_read_from_accelerates_environment(tmp_path):
    """The variables `accelerate launch` sets (accelerate/utils/launch.py:305-309 for FSDP, 566-582 for DeepSpeed)."""
    assert sharded_launcher({}) == ""
    assert sharded_launcher({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}) == "fsdp"
    assert sharded_launcher({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}) == "zero3"
    assert sharded_launcher({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}) == ""
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    assert sharded_launcher({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(ds)}) == "zero3"


def test_qlora_config_follows_the_dtype_and_the_launcher():
    from transformers import BitsAndBytesConfig

    one = BitsAndBytesConfig(**qlora_config(torch.float16))
    assert one.bnb_4bit_compute_dtype == torch.float16 and one.bnb_4bit_quant_storage == torch.uint8
    assert one.load_in_4bit and one.bnb_4bit_quant_type == "nf4" and one.bnb_4bit_use_double_quant
    for launcher in ("fsdp", "zero3"):
        sharded = BitsAndBytesConfig(**qlora_config(torch.bfloat16, launcher))
        assert sharded.bnb_4bit_compute_dtype == sharded.bnb_4bit_quant_storage == torch.bfloat16


class Params4bit(torch.nn.Parameter):
    """Named as bitsandbytes' class: accelerate finds 4-bit weights by class name and leaves frozen
    non-floating ones out of FSDP2 sharding (accelerate/utils/fsdp_utils.py:789-812)."""


def test_integer_stored_4bit_weights_under_a_sharded_launcher_are_refused():
    model = torch.nn.Linear(4, 4)
    model.register_parameter("packed", Params4bit(torch.zeros(8, 1, dtype=torch.uint8), requires_grad=False))
    refuse_unshardable_4bit(model, "", "p")                       # one process: fine
    with pytest.raises(ReflectEvoError, match=r"models\.p\.quantization: 4bit under fsdp: 1 4-bit weights \(e\.g\. packed\)"):
        refuse_unshardable_4bit(model, "fsdp", "p")
    model.packed = Params4bit(torch.zeros(8, 1, dtype=torch.bfloat16), requires_grad=False)
    refuse_unshardable_4bit(model, "zero3", "p")                  # float storage: shardable


@pytest.mark.parametrize("major,env,compute,storage", [
    (7, {}, torch.float16, None),
    (8, {}, torch.bfloat16, None),
    (8, {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}, torch.bfloat16, torch.bfloat16),
    (7, {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, torch.float16, torch.float16),
])
def test_the_qlora_base_is_loaded_in_the_resolved_dtype(tiny_preset, monkeypatch, major, env, compute, storage):
    """`_base_model` with quantization 4bit on a (pretend) GPU: what reaches `from_pretrained`."""
    import transformers

    from reflectevo.training.model import _base_model

    _gpu(monkeypatch, major)
    for k in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_ZERO_STAGE"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "bitsandbytes" else real_find_spec(name, *a))
    real = transformers.AutoModelForCausalLM.from_pretrained
    seen = {}

    def from_pretrained(path, **kw):   # records the call; loads the tiny model unquantized (no bitsandbytes here)
        seen.update(kw)
        return real(path, dtype=kw["dtype"])

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    model = _base_model("tiny-random", dataclasses.replace(tiny_preset, quantization="4bit", dtype="auto"))
    q = seen["quantization_config"]
    assert seen["dtype"] == compute and q.bnb_4bit_compute_dtype == compute
    assert q.bnb_4bit_quant_storage == (storage or torch.uint8)
    dtypes = {p.dtype for p in model.parameters()}
    assert not any(p.requires_grad for p in model.parameters())
    assert dtypes == ({compute} if storage else {torch.float32})  # sharded: one float dtype (no fp32 norms)


def test_qlora_adapters_stay_float32_without_native_bf16(tiny_preset, monkeypatch):
    """TRL casts LoRA weights of a quantized model to bf16 (trl/trainer/sft_trainer.py:908-911); without native
    bf16 they go back to float32."""
    from types import SimpleNamespace

    from reflectevo.training.model import _qlora_adapter_dtype

    model = torch.nn.Linear(4, 4).to(torch.bfloat16)
    model.bias.requires_grad_(False)
    q = dataclasses.replace(tiny_preset, quantization="4bit", dtype="auto")
    _gpu(monkeypatch, 8)
    _qlora_adapter_dtype(q, SimpleNamespace(model=model))
    assert model.weight.dtype == torch.bfloat16
    _gpu(monkeypatch, 7)
    _qlora_adapter_dtype(q, SimpleNamespace(model=model))
    assert model.weight.dtype == torch.float32 and model.bias.dtype == torch.bfloat16   # trainable ones only


def test_tokens_per_second_count_every_process():
    """`TrainingArguments.world_size` is the process count (transformers/training_args.py:2003-2012)."""
    from types import SimpleNamespace

    from datasets import Dataset

    from reflectevo.config import SFTHyper
    from reflectevo.training.model import _tokens_per_s

    ds = Dataset.from_list([{"input_ids": [1] * 10}, {"input_ids": [1] * 30}])
    hp = SFTHyper(batch_size=2, grad_accum=3)
    one = _tokens_per_s(SimpleNamespace(train_dataset=ds, args=SimpleNamespace(world_size=1)), hp, 10.0, 5)
    eight = _tokens_per_s(SimpleNamespace(train_dataset=ds, args=SimpleNamespace(world_size=8)), hp, 10.0, 5)
    assert one == 20 * 5 * 2 * 3 / 10.0 and eight == 8 * one


def test_the_multi_gpu_launchers_have_install_extras():
    """Every accelerate config's backend installs through an extra, named in the README."""
    from accelerate.commands.config.config_args import load_config_from_file

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    readme = (ROOT / "README.md").read_text()
    for cfg in (ROOT / "configs" / "accelerate").glob("*.yaml"):
        if load_config_from_file(str(cfg)).distributed_type.value == "DEEPSPEED":
            assert any(dep.startswith("deepspeed") for dep in extras["deepspeed"])
            assert "pip install '.[deepspeed]'" in readme
