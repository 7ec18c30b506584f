"""vLLM backend without vLLM: registered, imported lazily, a clear error when missing, and (with a FAKE
`vllm` module injected into sys.modules, tests/fake_vllm.py, not the real engine) the requests it builds
and the engines it starts. The real engine needs a GPU machine with `pip install reflectevo[vllm]`;
nothing here runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import fake_vllm as fake
import pytest

from reflectevo.sampling import Sampling

from reflectevo.backends.registry import BACKENDS
from reflectevo.errors import ReflectEvoError


def test_registered_and_imported_lazily():
    assert "vllm" in BACKENDS
    code = ("import sys, reflectevo.backends.vllm_backend, reflectevo.backends.hf, reflectevo.backends.openai_backend; "
            "from reflectevo.backends.registry import BACKENDS; BACKENDS.get('vllm'); "
            "assert 'vllm' not in sys.modules, 'vllm imported at module import'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr


def test_missing_vllm_gives_the_install_hint(tiny_preset, monkeypatch):
    from reflectevo.backends.registry import make_backend

    monkeypatch.setitem(sys.modules, "vllm", None)   # `import vllm` raises ImportError, even where it is installed
    with pytest.raises(ReflectEvoError, match=r"backend vllm needs `pip install reflectevo\[vllm\]` on a GPU machine"):
        make_backend("tiny-random", replace(tiny_preset, backend="vllm"))


@pytest.fixture
def fake_vllm(monkeypatch):
    """A FAKE vllm package (tests/fake_vllm.py: LLM, SamplingParams, lora.request.LoRARequest) in sys.modules."""
    return fake.install(monkeypatch)


def test_fake_module_requests_carry_lora_and_per_prompt_seeds(fake_vllm, tiny_preset, tmp_path):
    from reflectevo.backends.hf import TransformersBackend
    from reflectevo.backends.registry import make_backend
    from reflectevo.backends.vllm_backend import VLLMBackend

    adapter = tmp_path / "reflector"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 12}))
    preset = replace(tiny_preset, backend="vllm")
    b = make_backend("tiny-random", preset, adapter=adapter)
    assert isinstance(b, VLLMBackend)
    (llm,) = fake.FakeLLM.instances
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
    assert c.llm is llm and c.lora.lora_int_id == 2 and len(fake.FakeLLM.instances) == 1
    base = VLLMBackend("tiny-random", preset)
    assert base.llm is llm and base.lora is None
    base.generate([prompt], Sampling(2))
    assert llm.calls[-1]["lora"] is None


def _adapter(path, r):
    """A PEFT-shaped adapter folder of rank `r`: its config and a small, well-formed weights file (the fake
    engine loads neither; evaluation checks both exist and can be read)."""
    import numpy as np
    from safetensors.numpy import save_file

    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"r": r, "lora_alpha": 2 * r, "peft_type": "LORA"}))
    save_file({"base_model.model.layers.0.q_proj.lora_A.weight": np.zeros((r, 8), np.float32)},
              str(path / "adapter_model.safetensors"))
    return path


def _stage(name):
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location(f"stage_{name}_vllm", root / "stages" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.app


def _vllm_params(tmp_path, **preset):
    from pathlib import Path

    import yaml
    from helpers import tiny_params_dict

    p = tiny_params_dict(Path(__file__).resolve().parents[1] / "params.yaml")
    p["models"]["tiny-random"].update(backend="vllm", max_length=4096, **preset)
    out = tmp_path / "params.yaml"
    out.write_text(yaml.safe_dump(p, sort_keys=False))
    return out, p


def test_evaluate_runs_the_base_and_every_adapter_on_one_engine(fake_vllm, tmp_path):
    """The evaluate stage builds the base model's backend first: that engine must already have LoRA on and a
    max_lora_rank for every adapter, since a second engine does not fit on the GPU (the fake fails as vLLM's
    start-up memory check does). Base + eight settings (nine adapters) -> exactly one engine."""
    from typer.testing import CliRunner

    params, _ = _vllm_params(tmp_path)
    runner = CliRunner()
    r = runner.invoke(_stage("prepare"), ["--params", str(params), "--out", str(tmp_path / "sources")])
    assert r.exit_code == 0, r.output
    models = tmp_path / "models"
    roles = {"one_stage": {"one_stage": "."}, "two_stage": {"reflector": "reflector", "corrector": "corrector"},
             "dpo_pm": {"reflector": "."}, "dpo_pref": {"reflector": "."}, "sft_qa": {"answerer": "."},
             "grpo_one_stage": {"one_stage": "."}, "grpo_reflect_retry": {"reflector": "."}, "rloo": {"one_stage": "."}}
    ranks = {"one_stage": 8, "two_stage": 8, "dpo_pm": 8, "dpo_pref": 8, "sft_qa": 24, "grpo_one_stage": 8,
             "grpo_reflect_retry": 8, "rloo": 8}
    paths = []
    for setting, adapters in roles.items():
        for sub in adapters.values():
            paths.append(_adapter(models / setting / sub if sub != "." else models / setting, ranks[setting]))
        (models / setting / "model_card.json").write_text(json.dumps(
            {"setting": setting, "status": "trained", "base": {"preset": "tiny-random"}, "adapters": adapters}))
    r = runner.invoke(_stage("evaluate"), [str(a) for a in (
        "--params", params, "--sources", tmp_path / "sources/test.jsonl", "--models", models,
        "--predictions", tmp_path / "p.jsonl", "--metrics", tmp_path / "eval.json", "--plots", tmp_path / "plots")])
    assert r.exit_code == 0, r.output
    (llm,) = fake.FakeLLM.instances                                       # one engine for base + 9 adapters
    assert llm.kw["enable_lora"] is True and llm.kw["max_lora_rank"] == 32 and llm.kw["max_loras"] >= 2
    assert llm.kw["max_model_len"] == 4096 and "quantization" not in llm.kw and llm.kw["generation_config"] == "vllm"
    used = {c["lora"].lora_path for c in llm.calls if c["lora"] is not None}
    assert used == {str(x.resolve()) for x in paths}
    assert any(c["lora"] is None for c in llm.calls)                      # trial 1 and the baselines: the base
    assert llm.swaps == len(paths) - llm.kw["max_loras"]                  # reflector + corrector never evict each other
    report = json.loads((tmp_path / "eval.json").read_text())
    assert set(report["systems"]) == {"base_noreflect", "base_reflect", *roles} and report["skipped"] == {}


def test_a_4bit_vllm_preset_serves_the_base_unquantized(fake_vllm, tiny_preset):
    """vLLM 0.32/0.33 know no "bitsandbytes" quantization (the fake refuses it as they do): 4bit is a QLoRA
    training setting, so generation serves the base in the preset's dtype, as the transformers backend does."""
    from reflectevo.backends.registry import make_backend
    from reflectevo.backends.vllm_backend import engine_kwargs

    q = replace(tiny_preset, backend="vllm", quantization="4bit")
    assert "quantization" not in engine_kwargs("tiny-random", q) and engine_kwargs("tiny-random", q)["dtype"] == "float32"
    b = make_backend("tiny-random", q)
    assert b.dtype == "float32" and "quantization" not in fake.FakeLLM.instances[0].kw


def test_engine_context_dtype_and_overrides(fake_vllm, tiny_preset, monkeypatch):
    from reflectevo.backends.registry import make_backend
    from reflectevo.backends.vllm_backend import VLLMBackend

    preset = replace(tiny_preset, backend="vllm", max_length=1536)
    b = make_backend("tiny-random", preset)
    (llm,) = fake.FakeLLM.instances
    assert llm.kw["max_model_len"] == 1536 and b.max_model_len == 1536 and llm.kw["dtype"] == "float32"
    # a preset dtype `auto` is resolved as transformers resolves it, and the record takes the engine's dtype
    monkeypatch.setattr(fake.FakeLLM, "instances", [])
    from reflectevo.backends import vllm_backend

    monkeypatch.setattr(vllm_backend, "_ENGINES", {})
    monkeypatch.setenv("REFLECTEVO_VLLM_ARGS", '{"dtype": "auto", "max_model_len": -1, "enforce_eager": true}')
    monkeypatch.setenv("REFLECTEVO_VLLM_GPU_MEMORY", "0.5")
    b = VLLMBackend("tiny-random", preset)
    (llm,) = fake.FakeLLM.instances
    assert llm.kw["enforce_eager"] is True and llm.kw["gpu_memory_utilization"] == 0.5 and llm.kw["max_model_len"] == -1
    assert b.dtype == "bfloat16" and b.max_model_len == 32768                # what the engine reports, not "auto"
    monkeypatch.setenv("REFLECTEVO_VLLM_ARGS", "{enforce_eager: true}")
    with pytest.raises(ReflectEvoError, match=r"\$REFLECTEVO_VLLM_ARGS: not JSON"):
        VLLMBackend("tiny-random", preset)


def test_a_prompt_beyond_the_engine_context_is_one_clear_error(fake_vllm, tiny_preset):
    from reflectevo.backends.registry import make_backend

    b = make_backend("tiny-random", replace(tiny_preset, backend="vllm", max_length=100))
    prompt = b.render([{"role": "user", "content": "What is 2 + 3?"}])
    n = len(b.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert n < 90
    assert b.generate([prompt], Sampling(100 - n))[0].n_new_tokens == 3   # fits exactly
    with pytest.raises(ReflectEvoError, match=rf"models\.tiny-random\.max_length: a prompt of {n} tokens \+ {101 - n} new "
                                              r"tokens exceeds the vLLM engine's max_model_len 100; raise max_length"):
        b.generate([prompt, "x"], Sampling(101 - n))


def test_an_adapter_beyond_the_engines_rank_is_one_clear_error(fake_vllm, tiny_preset, tmp_path):
    from reflectevo.backends.registry import make_backend

    preset = replace(tiny_preset, backend="vllm")
    base = make_backend("tiny-random", preset)                              # sized for lora.r = 4 -> 8
    with pytest.raises(ReflectEvoError, match=r"an adapter needs max_lora_rank 64, but this process's vLLM engine "
                                              r"started with 8.*serves="):
        make_backend("tiny-random", preset, _adapter(tmp_path / "big", 64))
    assert len(fake.FakeLLM.instances) == 1 and base.llm is fake.FakeLLM.instances[0]


def test_new_tokens_leave_out_the_stop_token():
    import types

    from reflectevo.backends.vllm_backend import new_tokens

    def c(ids, finish, stop=None):
        return types.SimpleNamespace(token_ids=ids, finish_reason=finish, stop_reason=stop)

    assert new_tokens(c([5, 6, fake.EOS], "stop")) == 2                     # EOS: stop_reason None
    assert new_tokens(c([5, 6, 99], "stop", 99)) == 2                       # a stop token id (generation_config eos)
    assert new_tokens(c([5, 6, 7], "length")) == 3
    assert new_tokens(c([5, 6, 7], "stop", "\n\n")) == 3                    # a stop string is not a token we drop
    assert new_tokens(c([], "stop")) == 0


def test_generate_stage_with_vllm_records_vllms_sampler_and_dtype(fake_vllm, tmp_path):
    from typer.testing import CliRunner

    from reflectevo.backends.vllm_backend import SAMPLER
    from reflectevo.generation.keys import SAMPLER as HF_SAMPLER
    from reflectevo.episodes.shards import load_episodes

    params, _ = _vllm_params(tmp_path)
    runner = CliRunner()
    assert runner.invoke(_stage("prepare"), ["--params", str(params), "--out", str(tmp_path / "sources")]).exit_code == 0
    r = runner.invoke(_stage("generate"), [str(a) for a in (
        "--params", params, "--sources", tmp_path / "sources/train.jsonl", "--out", tmp_path / "raw",
        "--summary", tmp_path / "g.json", "--no-progress")])
    assert r.exit_code == 0, r.output
    eps = list(load_episodes(tmp_path / "raw").values())
    assert eps and all(ep["gen"]["sampler"] == SAMPLER != HF_SAMPLER for ep in eps)
    # the fake writes 3 tokens a call and no answer, so trial 1 also gets the answer step (3 more)
    assert all(ep["resolved_dtype"] == "float32" and ep["trial1"]["forced_answer"]
               and ep["trial1"]["n_new_tokens"] == 6 for ep in eps)
    assert len(fake.FakeLLM.instances) == 1


def test_the_gpu_check_scripts_evaluate_flow_runs_on_one_engine(fake_vllm, tiny_preset, tmp_path):
    """bench/gpu_check_vllm_lora.py's step (4) (trial 1 by the base, reflection by an adapter, retry by the
    base) on the fake engine: the script's own code, so it keeps up with the evaluation API."""
    import importlib.util
    from pathlib import Path

    from reflectevo.backends.vllm_backend import VLLMBackend

    spec = importlib.util.spec_from_file_location("gpu_check", Path(__file__).resolve().parents[1] / "bench" /
                                                  "gpu_check_vllm_lora.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    preset = replace(tiny_preset, backend="vllm")
    a = _adapter(tmp_path / "a", 16)
    base = VLLMBackend("tiny-random", preset, serves=[a])
    adapter = VLLMBackend("tiny-random", preset, adapter=a, serves=[a])
    ids = mod.prompt_ids(base.tokenizer)
    assert len(ids) == len(mod.PROMPTS) and ids[0] == base.tokenizer(base.render(
        [{"role": "user", "content": mod.PROMPTS[0]}]), add_special_tokens=False)["input_ids"]
    flow = mod.evaluate_flow(base, adapter, 3, 8)
    assert flow["items"] == 3 and flow["reflected"] == 3 and len(fake.FakeLLM.instances) == 1
    (llm,) = fake.FakeLLM.instances
    assert llm.kw["max_lora_rank"] == 16 and {c["lora"] is None for c in llm.calls} == {True, False}


def test_vllm_score_reads_prompt_logprobs_like_the_transformers_score(fake_vllm, tiny_preset):
    """`VLLMBackend.score` from vLLM's prompt log-probabilities (the fake serves the tiny model's own per-position
    log-probabilities in vLLM's layout) equals the transformers backend's teacher-forced score."""
    import torch

    from reflectevo.backends.hf import TransformersBackend
    from reflectevo.backends.vllm_backend import VLLMBackend

    local = TransformersBackend("tiny-random", tiny_preset)

    def logprobs(ids):   # log p(ids[i] | ids[:i]) for i >= 1 (position 0 is never read)
        with torch.no_grad():
            logits = local.model(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)
        return [0.0] + [float(logits[i - 1, t]) for i, t in enumerate(ids) if i > 0]

    fake.FakeLLM.prompt_logprob_fn = logprobs
    b = VLLMBackend("tiny-random", replace(tiny_preset, backend="vllm"))
    prompts = [b.render([{"role": "user", "content": q}]) for q in ("What is 2 + 5?", "Is every cat an animal?")]
    conts = ["Thought: 2 + 5 = 7.\nAction: Finish[7]", " Finish[Yes]"]
    got = b.score(prompts, conts)
    assert got == pytest.approx(local.score(prompts, conts), abs=1e-4)
    (call,) = fake.FakeLLM.instances[0].calls
    assert all(sp.prompt_logprobs == 1 and sp.max_tokens == 1 and sp.temperature == 0.0 for sp in call["params"])
    assert b.score([], []) == []


def test_a_likelihood_judge_on_an_endpoint_stops_before_anything_loads(tmp_path, monkeypatch):
    """curate with `judge: likelihood` on a backend that cannot score: one line, exit 2, and no backend built."""
    import yaml
    from typer.testing import CliRunner

    from reflectevo.backends import registry
    from reflectevo.judge import check_judge_backend

    params, p = _vllm_params(tmp_path)
    p["models"]["tiny-random"]["backend"] = "openai"
    p["curate"]["judge"] = "likelihood"
    params.write_text(yaml.safe_dump(p, sort_keys=False))
    built = []
    monkeypatch.setattr(registry, "make_backend", lambda *a, **k: built.append(a))
    r = CliRunner().invoke(_stage("curate"), ["--params", str(params), "--raw", str(tmp_path / "raw"),
                                              "--out", str(tmp_path / "cur"), "--metrics", str(tmp_path / "m.json")])
    assert r.exit_code == 2 and built == []
    assert "curate.judge: likelihood scores continuations, which backend 'openai'" in r.output
    for backend in ("transformers", "vllm", "scripted"):   # these score
        check_judge_backend("likelihood", "p", type("P", (), {"backend": backend})())


def test_a_cut_at_the_answer_pattern_counts_the_tokens_up_to_the_cut(tiny_preset):
    """vLLM generates past `stop_regex`; the text is cut afterwards, and `n_new_tokens` counts the tokens up to
    the one that completed the answer (where the transformers backend stops), not the whole completion."""
    import types

    from reflectevo.backends.vllm_backend import _generation
    from reflectevo.models.load import load_tokenizer

    tok = load_tokenizer("tiny-random", tiny_preset)
    text = "Thought: 3 + 4 = 7.\nAction: Finish[7] and then more words after the answer"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    sampling = Sampling(64, stop_regex=r"Finish\[[^\]]*\]")

    def out(finish, stop=None, tokens=ids):
        comp = types.SimpleNamespace(text=text, token_ids=tokens, finish_reason=finish, stop_reason=stop)
        return types.SimpleNamespace(prompt_token_ids=[1, 2, 3], outputs=[comp])

    g = _generation(out("length"), sampling, tok)
    assert g.text.endswith("Finish[7]") and g.stop_reason == "stop" and g.n_prompt_tokens == 3
    assert "Finish[7]" in tok.decode(ids[:g.n_new_tokens]) and "Finish[7]" not in tok.decode(ids[:g.n_new_tokens - 1])
    assert g.n_new_tokens < len(ids)
    eos = _generation(out("stop", tokens=[*ids, fake.EOS]), Sampling(64), tok)   # no cut: all but the EOS
    assert eos.n_new_tokens == len(ids) and eos.stop_reason == "eos"
    for reason in ("abort", "error"):   # an aborted request is not an ending: nothing recorded
        with pytest.raises(ReflectEvoError, match=f"finish_reason '{reason}'"):
            _generation(out(reason), sampling, tok)


def test_the_generate_stage_gives_vllm_a_phase_per_call(fake_vllm, tmp_path, monkeypatch):
    """vLLM schedules its own batches: the generate stage hands it `chunk_items` items per chunk (one call per
    phase), not the transformers backend's gen_batch_size."""
    from typer.testing import CliRunner

    from reflectevo.backends.vllm_backend import VLLMBackend

    params, _ = _vllm_params(tmp_path, gen_batch_size=2)
    runner = CliRunner()
    assert runner.invoke(_stage("prepare"), ["--params", str(params), "--out", str(tmp_path / "sources")]).exit_code == 0

    def calls(out, chunk_items):
        monkeypatch.setattr(VLLMBackend, "chunk_items", chunk_items)
        fake.FakeLLM.instances = []
        monkeypatch.setattr("reflectevo.backends.vllm_backend._ENGINES", {})
        r = runner.invoke(_stage("generate"), [str(a) for a in (
            "--params", params, "--sources", tmp_path / "sources/train.jsonl", "--out", tmp_path / out,
            "--summary", tmp_path / f"{out}.json", "--no-progress")])
        assert r.exit_code == 0, r.output
        return [len(c["prompts"]) for c in fake.FakeLLM.instances[0].calls]

    phase = calls("raw", VLLMBackend.chunk_items)
    small = calls("raw_small", 0)          # what gen_batch_size chunks gave (8 items at least)
    assert sum(phase) == sum(small) and len(phase) < len(small) and max(phase) > max(small)


def test_auto_dtype_for_vllm_is_found_without_starting_cuda(monkeypatch, tiny_preset):
    """`engine_dtype` for `auto` asks vLLM's platform (NVML, vllm/platforms/cuda.py `NvmlCudaPlatform`), never
    torch's CUDA runtime, which would create a CUDA context in the process before the engine starts."""
    import sys
    import types

    import torch

    from reflectevo.backends.vllm_backend import engine_dtype

    def no_cuda(*a, **k):
        raise AssertionError("CUDA was started before the engine")

    for name in ("is_bf16_supported", "get_device_properties", "get_device_capability", "init", "current_device"):
        monkeypatch.setattr(torch.cuda, name, no_cuda)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for major, want in ((8, "bfloat16"), (7, "float16")):
        platform = types.SimpleNamespace(is_cuda=lambda: True, has_device_capability=lambda c, m=major: m * 10 >= c)
        vllm = types.ModuleType("vllm")
        platforms = types.ModuleType("vllm.platforms")
        platforms.current_platform = platform
        monkeypatch.setitem(sys.modules, "vllm", vllm)
        monkeypatch.setitem(sys.modules, "vllm.platforms", platforms)
        assert engine_dtype(replace(tiny_preset, dtype="auto")) == want
    assert engine_dtype(replace(tiny_preset, dtype="bfloat16")) == "bfloat16"   # named: as named
