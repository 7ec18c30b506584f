"""A FAKE `vllm` package for the CPU tests: no model, no GPU, only the API surface our backend touches,
with the checks and outputs of the real one as read in the vLLM 0.33.0 wheel (line numbers: 0.33.0; the
0.32.0 wheel has the same code within a line or two). Nothing here runs vLLM itself; loading adapters in
the real engine is `bench/gpu_check_vllm_lora.py`'s job on a GPU machine."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import ClassVar

EOS = 0   # the fake's end-of-sequence token id


class FakeModelConfig:
    """`LLM.model_config` (vllm/entrypoints/llm.py:344, `self.model_config = self.llm_engine.model_config`):
    `dtype` is a torch dtype after `_get_and_verify_dtype` (vllm/config/model.py:806; "auto" takes the
    checkpoint's dtype), `max_model_len` the context (vllm/config/model.py:249; None = the model's own)."""

    def __init__(self, dtype: str, max_model_len: int | None) -> None:
        import torch

        self.dtype = getattr(torch, "bfloat16" if dtype == "auto" else dtype)
        self.max_model_len = max_model_len if max_model_len and max_model_len > 0 else 32768


class FakeLLM:
    """`vllm.LLM` (vllm/entrypoints/llm.py:177 `__init__`, keyword arguments as there:
    `gpu_memory_utilization=0.92` at line 196, the LoRA options go on to `EngineArgs` via **kwargs;
    `generate(prompts, sampling_params, *, use_tqdm, lora_request)` at line 417). Like the real one:

    - a second engine while one holds its share of the GPU fails at start-up with vLLM's memory check
      (vllm/v1/worker/utils.py:761-769: "Free memory on device ... is less than desired GPU memory
      utilization"); the real engine frees its memory only at shutdown, never while referenced;
    - `quantization` must be one of its methods, which have no "bitsandbytes" in 0.32/0.33
      (vllm/model_executor/layers/quantization/__init__.py:15-50; "Unknown quantization method",
      vllm/config/model.py:1464-1469);
    - `max_lora_rank` must be one of `MaxLoRARanks` (vllm/config/lora.py:27), `max_loras` >= 1 (line 36);
    - a `lora_request` on an engine without `enable_lora` fails (vllm/v1/engine/input_processor.py:278-286),
      an adapter with `r` above `max_lora_rank` fails (vllm/lora/peft_helper.py:188-197), and more distinct
      adapters used than `max_loras` without reloading counts as a swap (`swaps`);
    - a prompt of max_model_len tokens or more fails (vllm/v1/engine/input_processor.py:574-600);
    - each output is a RequestOutput with `prompt_token_ids` and `outputs[0]` a CompletionOutput with
      `text`, `token_ids`, `finish_reason`, `stop_reason` (vllm/outputs.py:59-94, 137); a completion that
      ends at EOS keeps the EOS as its last token id, finish_reason "stop", stop_reason None
      (vllm/v1/core/sched/utils.py:98-107); one cut at max_tokens has finish_reason "length".
    - `prompt_logprobs=k` in the SamplingParams: `RequestOutput.prompt_logprobs` is None for the first prompt
      position, then per position a dict {token id: Logprob} holding the prompt's own token (vllm/logprobs.py
      `create_prompt_logprobs`, `append_logprobs_for_next_position`; vllm/v1/engine/logprobs.py
      `_update_prompt_logprobs`); the values come from `prompt_logprob_fn(ids)` (a test sets it; default: a
      fixed made-up number per position).
    The completion is 3 tokens then EOS (or max_tokens tokens), its text names the seed and temperature;
    `completion_fn(ids, sp)`, when a test sets it, returns (text, token ids, finish_reason, stop_reason) instead."""

    instances: ClassVar[list] = []
    prompt_logprob_fn: ClassVar = None
    completion_fn: ClassVar = None
    MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
    QUANTIZATION = ("awq", "fp8", "gptq", "gptq_marlin", "awq_marlin", "compressed-tensors", "torchao", "mxfp4")

    def __init__(self, model: str, **kw) -> None:
        if kw.get("quantization") is not None and kw["quantization"] not in self.QUANTIZATION:
            raise ValueError(f"Unknown quantization method: {kw['quantization']}. Must be one of "  # config/model.py:1464-1469
                             f"{list(self.QUANTIZATION)}.")
        if FakeLLM.instances:
            raise ValueError("Free memory on device cuda:0 (1.2/79.2 GiB) on startup is less than desired GPU memory "
                             f"utilization ({kw.get('gpu_memory_utilization', 0.92)}, 72.9 GiB). Decrease GPU memory "
                             "utilization or reduce GPU memory used by other processes.")
        if kw.get("enable_lora"):
            assert kw.get("max_lora_rank", 16) in self.MAX_LORA_RANKS, kw
            assert kw.get("max_loras", 1) >= 1, kw
        self.kw = {"model": model, **kw}
        self.model_config = FakeModelConfig(kw.get("dtype", "auto"), kw.get("max_model_len"))
        self.calls: list[dict] = []
        self.loaded: list[int] = []     # LoRA ids on the GPU, most recent last
        self.swaps = 0
        FakeLLM.instances.append(self)

    def _use_lora(self, req) -> None:
        if req is None:
            return
        if not self.kw.get("enable_lora"):
            raise ValueError(f"Got lora_request {req} but LoRA is not enabled!")
        r = json.loads((Path(req.lora_path) / "adapter_config.json").read_text())["r"]
        if r > self.kw.get("max_lora_rank", 16):
            raise ValueError(f"LoRA rank {r} is greater than max_lora_rank {self.kw.get('max_lora_rank', 16)}.")
        if req.lora_int_id in self.loaded:
            self.loaded.remove(req.lora_int_id)
        elif len(self.loaded) >= self.kw.get("max_loras", 1):
            self.loaded.pop(0)
            self.swaps += 1
        self.loaded.append(req.lora_int_id)

    def generate(self, prompts, sampling_params=None, *, use_tqdm=True, lora_request=None):
        self._use_lora(lora_request)
        self.calls.append({"prompts": prompts, "params": sampling_params, "lora": lora_request, "tqdm": use_tqdm})
        out = []
        for p, sp in zip(prompts, sampling_params, strict=True):
            ids = p["prompt_token_ids"]
            if len(ids) >= self.model_config.max_model_len:
                raise ValueError(f"The decoder prompt (length {len(ids)}) is longer than the maximum model length "
                                 f"of {self.model_config.max_model_len}.")
            stop = sp.max_tokens > 3
            tokens = [1] * min(3, sp.max_tokens) + ([EOS] if stop else [])
            comp = types.SimpleNamespace(text=f"seed={sp.seed} T={sp.temperature}", token_ids=tokens,
                                         finish_reason="stop" if stop else "length", stop_reason=None)
            if FakeLLM.completion_fn is not None:
                text, tokens, finish, why = FakeLLM.completion_fn(ids, sp)
                comp = types.SimpleNamespace(text=text, token_ids=tokens, finish_reason=finish, stop_reason=why)
            plp = None
            if sp.prompt_logprobs is not None:
                values = (FakeLLM.prompt_logprob_fn(ids) if FakeLLM.prompt_logprob_fn is not None
                          else [-0.5 - (i % 5) for i in range(len(ids))])
                plp = [None] + [{tok: types.SimpleNamespace(logprob=values[i], rank=1, decoded_token=None)}
                                for i, tok in enumerate(ids) if i > 0]
            out.append(types.SimpleNamespace(prompt_token_ids=ids, outputs=[comp], prompt_logprobs=plp))
        return out


class FakeSamplingParams:
    """`vllm.SamplingParams` (vllm/sampling_params.py:271-446): only its field names are accepted, with
    its defaults (n=1, temperature=1.0, top_p=1.0, top_k=0, repetition_penalty=1.0, seed=None, stop=None,
    max_tokens=16, ...)."""

    DEFAULTS: ClassVar[dict] = {"n": 1, "presence_penalty": 0.0, "frequency_penalty": 0.0, "repetition_penalty": 1.0,
                                "temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "seed": None,
                                "stop": None, "stop_token_ids": None, "ignore_eos": False, "max_tokens": 16,
                                "min_tokens": 0, "logprobs": None, "prompt_logprobs": None, "skip_special_tokens": True,
                                "include_stop_str_in_output": False}

    def __init__(self, **kw) -> None:
        unknown = set(kw) - set(self.DEFAULTS)
        if unknown:
            raise TypeError(f"Unexpected keyword argument {sorted(unknown)}")
        self.__dict__.update({**self.DEFAULTS, **kw})


class FakeLoRARequest:
    """`vllm.lora.request.LoRARequest(lora_name, lora_int_id, lora_path)` (vllm/lora/request.py:8-28)."""

    def __init__(self, lora_name: str, lora_int_id: int, lora_path: str = "") -> None:
        self.lora_name, self.lora_int_id, self.lora_path = lora_name, lora_int_id, lora_path


def install(monkeypatch) -> types.ModuleType:
    """Put the fake `vllm`, `vllm.lora`, `vllm.lora.request` in sys.modules; empty our engine caches."""
    from reflectevo.backends import vllm_backend

    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = FakeLLM, FakeSamplingParams
    lora = types.ModuleType("vllm.lora")
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = FakeLoRARequest
    for name, mod in (("vllm", vllm), ("vllm.lora", lora), ("vllm.lora.request", request)):
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(vllm_backend, "_ENGINES", {})
    monkeypatch.setattr(vllm_backend, "_LORA_IDS", {})
    FakeLLM.instances = []
    FakeLLM.prompt_logprob_fn = FakeLLM.completion_fn = None
    return vllm
