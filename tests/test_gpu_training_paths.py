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

    from reflectevo.training.config import SFTHyper
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


# --- one process, several GPUs --------------------------------------------------------------------------


def test_eight_gpus_without_a_launcher_train_on_the_first_and_say_so(monkeypatch):
    """Without a launcher transformers makes `n_gpu = torch.cuda.device_count()` (transformers/training_args.py
    `_setup_devices`, the `else:` branch) and TRL then refuses to train (`if args.n_gpu > 1: raise ValueError(...
    does not support nn.DataParallel`, trl/trainer/sft_trainer.py:1118, dpo_trainer.py:882, grpo_trainer.py:975,
    rloo_trainer.py:661). With 8 GPUs visible the train stage narrows CUDA_VISIBLE_DEVICES to the first before
    CUDA starts and prints one line naming the launcher that uses all eight."""
    import io

    from reflectevo.training.dist import one_gpu_without_launcher

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    out = io.StringIO()
    env = {"CUDA_VISIBLE_DEVICES": "4,5,6,7,0,1,2,3"}
    assert one_gpu_without_launcher(env, out) == "4" and env["CUDA_VISIBLE_DEVICES"] == "4"
    line = out.getvalue()
    assert line.count("\n") == 1 and "8 GPUs visible but no launcher: training on GPU 4 only" in line
    assert "-S 'launcher=accelerate launch --multi_gpu --num_processes 8'" in line
    env = {}
    assert one_gpu_without_launcher(env, io.StringIO()) == "0" and env == {"CUDA_VISIBLE_DEVICES": "0"}
    env = {"LOCAL_RANK": "3", "CUDA_VISIBLE_DEVICES": "0,1"}          # under a launcher: one GPU per process already
    assert one_gpu_without_launcher(env, out) is None and env["CUDA_VISIBLE_DEVICES"] == "0,1"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert one_gpu_without_launcher({}, out) is None
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)   # too late to narrow: one line, the launcher
    with pytest.raises(ReflectEvoError, match=r"8 GPUs visible to one training process without a launcher .*"
                                              r"accelerate launch --multi_gpu --num_processes 8"):
        one_gpu_without_launcher({}, io.StringIO())


def test_the_train_stage_narrows_the_gpus_before_anything_else(monkeypatch, tmp_path, capsys):
    """`run_train` (the train stage) applies the one-GPU rule before any model is found or loaded: on a mocked
    8-GPU machine a setting with rows to train reports the narrowing, and CUDA_VISIBLE_DEVICES is GPU 0 when
    the model is first looked for. A stage with nothing to train (a disabled RL setting) touches neither
    torch nor the GPUs (tests/test_stage_costs.py)."""
    import os

    import yaml
    from helpers import tiny_params_dict

    from reflectevo.models import load
    from reflectevo.training import stage
    from reflectevo.training.stage import run_train

    class Found(Exception):
        pass

    def check_available(name, preset):
        raise Found(os.environ.get("CUDA_VISIBLE_DEVICES"))

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(stage, "read_rows", lambda path, setting: [{"row": 1}])
    monkeypatch.setattr(load, "check_available", check_available)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params_dict(ROOT / "params.yaml"), sort_keys=False))
    with pytest.raises(Found) as seen:
        run_train("one_stage", params, tmp_path / "dplus_train.jsonl", "none", tmp_path / "models/one_stage",
                  tmp_path / "m.json")
    assert str(seen.value) == "0" and os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    assert "train: 8 GPUs visible but no launcher: training on GPU 0 only" in capsys.readouterr().err


# --- dtypes and build order -------------------------------------------------------------------------------


def test_the_trained_base_is_loaded_in_the_resolved_dtype_on_cuda(tiny_preset, monkeypatch):
    """LoRA on CUDA: the frozen base in the resolved dtype (bf16 on Ampere+, fp16 before); full fine-tuning keeps
    float32 master weights (computed in bf16 by the trainer's autocast); a CPU trains in float32."""
    import transformers

    from reflectevo.training.model import _base_model, train_dtype

    auto = dataclasses.replace(tiny_preset, dtype="auto")
    assert train_dtype(auto, "lora") == torch.float32 and train_dtype(auto, "full") == torch.float32   # CPU
    _gpu(monkeypatch, 8)
    assert train_dtype(auto, "lora") == torch.bfloat16 and train_dtype(auto, "full") == torch.float32
    _gpu(monkeypatch, 7)
    assert train_dtype(auto, "lora") == torch.float16
    real, seen = transformers.AutoModelForCausalLM.from_pretrained, []
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda path, **kw: seen.append(kw["dtype"]) or real(path, dtype=kw["dtype"]))
    _gpu(monkeypatch, 8)
    assert _base_model("tiny-random", auto, "lora").dtype == torch.bfloat16
    assert _base_model("tiny-random", auto, "full").dtype == torch.float32
    assert seen == [torch.bfloat16, torch.float32]


@pytest.mark.parametrize("setting", ["grpo_reflect_retry", "rloo"])
def test_rl_builds_its_arguments_before_the_model(tiny_preset, monkeypatch, tmp_path, setting):
    """As the offline trainers do: the training arguments first, since under DeepSpeed ZeRO-3 they switch on the
    partitioned loading of every later `from_pretrained` (transformers/training_args.py: `DeepSpeedPlugin()`
    then `set_deepspeed_weakref()`, when ACCELERATE_USE_DEEPSPEED is set). With `retry_by: base` and full
    fine-tuning the frozen retry model is the exception: a whole replica loaded before the arguments, with FSDP's
    RAM-efficient loading (rank 0 only, transformers `is_fsdp_enabled`) off, frozen, and on the trainer's device."""
    import os

    import transformers
    import trl
    from test_rl_training import RL_CFG, episodes

    from reflectevo.training.data import examples, rl_rows
    from reflectevo.training.rl import build_rl_trainer

    events = []
    real = transformers.AutoModelForCausalLM.from_pretrained

    def from_pretrained(path, **kw):
        events.append(("load", os.environ.get("FSDP_CPU_RAM_EFFICIENT_LOADING")))
        return real(path, **kw)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    for cls in (trl.GRPOConfig, trl.RLOOConfig):
        post = cls.__post_init__
        monkeypatch.setattr(cls, "__post_init__", lambda self, post=post: events.append("args") or post(self))
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "true")
    cfg = dataclasses.replace(RL_CFG, method="full", rl=dataclasses.replace(RL_CFG.rl, retry_by="base"))
    role = "reflector" if setting == "grpo_reflect_retry" else "one_stage"
    ex = examples(setting, rl_rows(episodes(4), "oracle"))[role]
    trainer = build_rl_trainer(setting, "tiny-random", tiny_preset, ex, [], cfg, tmp_path / "out")
    if setting == "rloo":
        assert events == ["args", ("load", "true")]
        return
    assert events == [("load", "false"), "args", ("load", "true")]
    assert os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true"     # restored
    base = trainer.rollout_func.base_model
    assert base is not trainer.model and not any(p.requires_grad for p in base.parameters()) and not base.training
    assert {p.device for p in base.parameters()} == {trainer.accelerator.device}


def test_the_frozen_retry_model_never_loads_partitioned(tiny_preset, monkeypatch):
    """While DeepSpeed ZeRO-3's partitioned loading is on (transformers' `is_deepspeed_zero3_enabled`, set by a
    trainer's arguments), the frozen replica would load as empty shards: one line instead."""
    import transformers.integrations.deepspeed as hfds

    from reflectevo.training.model import frozen_base

    assert not frozen_base("tiny-random", tiny_preset).training
    monkeypatch.setattr(hfds, "is_deepspeed_zero3_enabled", lambda: True)
    with pytest.raises(ReflectEvoError, match=r"models\.tiny-random: the frozen retry model must load whole"):
        frozen_base("tiny-random", tiny_preset)


# --- vLLM rollouts ------------------------------------------------------------------------------------------


def test_vllm_rollouts_outside_trls_vllm_range_are_refused(tiny_preset):
    """TRL 1.16's `vllm` extra is vllm>=0.22.0,<=0.31.0 (its METADATA; trl/import_utils.py:107 warns outside it)
    and it drives the engine's internals (trl/generation/vllm_generation.py:511 `llm_engine.model_executor`), while
    the project's `vllm` extra (generation) is 0.32/0.33: refused in one line before any model loads."""
    from test_rl_training import RL

    from reflectevo.training.rl import check_vllm_rollouts, trl_vllm_range

    assert trl_vllm_range() == "<=0.31.0,>=0.22.0"
    hp = dataclasses.replace(RL, use_vllm=True)
    check_vllm_rollouts("grpo_one_stage", hp, vllm_version="0.31.0")
    check_vllm_rollouts("rloo", hp, vllm_version="0.24.0+cu129")          # a local build tag: its base version
    for version in ("0.33.0", "0.32.0", "0.21.0"):
        with pytest.raises(ReflectEvoError, match=rf"train.rl.use_vllm: TRL 1\.16\.\d+ samples rollouts with vllm "
                                                  rf"<=0\.31\.0,>=0\.22\.0, this environment has vllm {version}"):
            check_vllm_rollouts("grpo_one_stage", hp, vllm_version=version)
    with pytest.raises(ReflectEvoError, match=r"4-bit path needs vLLM's bitsandbytes method"):
        check_vllm_rollouts("rloo", hp, dataclasses.replace(tiny_preset, quantization="4bit"), vllm_version="0.33.0")


def test_the_launcher_is_a_params_key_of_every_train_stage(tmp_path):
    """`launcher` lives in params.yaml (so `dvc exp run -S 'launcher=...'` works and dvc.lock / `dvc exp show`
    record it): each train@<setting> stage's command starts with it and its params list it, as DVC itself
    resolves dvc.yaml (DVC reads params.yaml as template vars)."""
    import shutil

    import yaml
    from dvc.repo import Repo

    for f in ("dvc.yaml", "params.yaml", "reflectevo/resources/settings.yaml"):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / f, tmp_path / f)
    p = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert p["launcher"] == "python" and "launcher" not in (yaml.safe_load((ROOT / "dvc.yaml").read_text()).get("vars")
                                                            or [{}])[0]
    p["launcher"] = "accelerate launch --config_file configs/accelerate/fsdp.yaml"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    Repo.init(str(tmp_path), no_scm=True)
    train = [s for s in Repo(str(tmp_path)).index.stages if s.name.startswith("train@")]
    assert len(train) >= 8
    for stage in train:
        assert stage.cmd.startswith("accelerate launch --config_file configs/accelerate/fsdp.yaml stages/train.py ")
        params = {k for d in stage.deps if type(d).__name__ == "ParamsDependency" for k in d.params}
        assert "launcher" in params, stage.name
    from reflectevo.config.params import read_params

    assert read_params(tmp_path / "params.yaml")["launcher"].startswith("accelerate launch")
