"""vLLM backend without vLLM: registered, imported lazily, a clear error when missing, and (with a FAKE
`vllm` module injected into sys.modules, not the real engine) the requests it builds. The real engine
needs a GPU machine with `pip install reflectevo[vllm]`; nothing here runs it."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from dataclasses import replace
from typing import ClassVar

import pytest

from reflectevo.backends import BACKENDS, Sampling
from reflectevo.errors import ReflectEvoError


def test_registered_and_imported_lazily():
    assert "vllm" in BACKENDS
    code = ("import sys, reflectevo.backends.vllm_backend, reflectevo.backends.hf, reflectevo.backends.openai_backend; "
            "from reflectevo.backends import BACKENDS; BACKENDS.get('vllm'); "
            "assert 'vllm' not in sys.modules, 'vllm imported at module import'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr


def test_missing_vllm_gives_the_install_hint(tiny_preset, monkeypatch):
    from reflectevo.backends.hf import make_backend

    monkeypatch.setitem(sys.modules, "vllm", None)   # `import vllm` raises ImportError, even where it is installed
    with pytest.raises(ReflectEvoError, match=r"backend vllm needs `pip install reflectevo\[vllm\]` on a GPU machine"):
        make_backend("tiny-random", replace(tiny_preset, backend="vllm"))


class FakeLLM:
    instances: ClassVar[list] = []

    def __init__(self, **kw):
        self.kw, self.calls = kw, []
        FakeLLM.instances.append(self)

    def generate(self, prompts, sampling_params=None, *, use_tqdm=True, lora_request=None):
        self.calls.append({"prompts": prompts, "params": sampling_params, "lora": lora_request, "tqdm": use_tqdm})
        out = []
        for p, sp in zip(prompts, sampling_params):
            ids = p["prompt_token_ids"]
            text = getattr(self, "text", None) or f"seed={sp.seed} T={sp.temperature}"
            # vllm/outputs.py CompletionOutput: finish_reason "stop" (EOS or a stop string, then named in
            # stop_reason, the string cut from the text) or "length"
            hit = [s for s in (sp.stop or []) if s in text]
            if hit:
                text, finish, why = text[:text.index(hit[0])], "stop", hit[0]
            else:
                finish, why = ("length" if sp.max_tokens <= 3 else "stop"), None
            comp = types.SimpleNamespace(text=text, token_ids=[1] * min(3, sp.max_tokens), finish_reason=finish,
                                         stop_reason=why)
            out.append(types.SimpleNamespace(prompt_token_ids=ids, outputs=[comp]))
        return out


class FakeSamplingParams:
    def __init__(self, **kw):
        self.__dict__.update(kw)


class FakeLoRARequest:
    def __init__(self, lora_name, lora_int_id, lora_path):
        self.lora_name, self.lora_int_id, self.lora_path = lora_name, lora_int_id, lora_path


@pytest.fixture
def fake_vllm(monkeypatch):
    """A FAKE vllm package (LLM, SamplingParams, lora.request.LoRARequest) in sys.modules."""
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
    return vllm


def test_fake_module_requests_carry_lora_and_per_prompt_seeds(fake_vllm, tiny_preset, tmp_path):
    from reflectevo.backends.hf import TransformersBackend, make_backend
    from reflectevo.backends.vllm_backend import VLLMBackend

    adapter = tmp_path / "reflector"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 12}))
    preset = replace(tiny_preset, backend="vllm")
    b = make_backend("tiny-random", preset, adapter=adapter)
    assert isinstance(b, VLLMBackend)
    (llm,) = FakeLLM.instances
    assert llm.kw["enable_prefix_caching"] is True and llm.kw["enable_lora"] is True
    assert llm.kw["max_lora_rank"] == 16 and llm.kw["dtype"] == "float32" and "tiny-llama" in llm.kw["model"]
    assert b.lora.lora_path == str(adapter.resolve()) and b.lora.lora_int_id == 1

    local = TransformersBackend("tiny-random", tiny_preset)
    msgs = [{"role": "user", "content": "What is 2 + 3?"}]
    prompt = b.render(msgs)
    assert prompt == local.render(msgs)                                   # same template, same stored prompt
    out = b.generate([prompt, prompt + "x"], Sampling(5, temperature=0.8, top_p=0.9, seed=3), seeds=[11, 42])
    call = llm.calls[-1]
    assert [sp.seed for sp in call["params"]] == [11, 42] and call["lora"] is b.lora and call["tqdm"] is False
    assert all(sp.n == 1 and sp.max_tokens == 5 and sp.top_p == 0.9 for sp in call["params"])
    ids = local.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert call["prompts"][0] == {"prompt_token_ids": ids}                # no special tokens added on top
    assert out[0].text == "seed=11 T=0.8" and out[0].n_prompt_tokens == len(ids) and out[0].n_new_tokens == 3

    b.generate([prompt, prompt], Sampling(5, seed=7))                     # seeds default to seed + position
    b.generate([prompt, prompt], Sampling(5, temperature=0.5, seed=7))
    assert [sp.seed for sp in llm.calls[-2]["params"]] == [None, None]    # greedy rows carry no seed
    assert [sp.seed for sp in llm.calls[-1]["params"]] == [7, 8]

    # a second adapter of the same model shares the engine, with its own LoRA id; the base model has none
    other = tmp_path / "corrector"
    other.mkdir()
    c = VLLMBackend("tiny-random", preset, adapter=other)
    assert c.llm is llm and c.lora.lora_int_id == 2 and len(FakeLLM.instances) == 1
    base = VLLMBackend("tiny-random", preset)
    assert base.llm is llm and base.lora is None
    base.generate([prompt], Sampling(2))
    assert llm.calls[-1]["lora"] is None
