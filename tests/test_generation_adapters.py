"""Adapters in generation (reflectevo.adapters): the episode key holds their content hashes, each phase
goes to its adapter on the transformers backend (a real tiny-random LoRA), and, with fakes, the vLLM
requests carry the adapter's LoRARequest and the OpenAI requests name the adapter `reflectevo serve` serves."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import replace
from pathlib import Path

import fake_vllm as fake
import pytest
from helpers import ScriptedBackend, arithmetic_responder

from reflectevo.adapters import GenerationAdapters, adapter_hash, generation_adapters, served_name
from reflectevo.generation.backends import build_phase_backends
from reflectevo.protocol.rounds import PhaseBackends
from reflectevo.sampling import Sampling
from reflectevo.training.config import DPOHyper, SFTHyper, TrainConfig
from reflectevo.config.sections import GenerateConfig
from reflectevo.errors import ReflectEvoError
from reflectevo.generation.episodes import Stats, run_chunk
from reflectevo.generation.run import generate
from reflectevo.generation.keys import make_spec
from reflectevo.tasks import Item
from reflectevo.tasks.registry import get_task

HP = SFTHyper(epochs=1.0, max_steps=2, batch_size=2, grad_accum=1, max_length=1024, warmup_ratio=0.0, save_steps=0)
CFG = TrainConfig(seed=0, sft=HP, dpo=DPOHyper(**dataclasses.asdict(HP), beta=0.1))
FP = {"preset": "tiny-random", "source": "tiny-random", "revision": "0"}


def dplus_rows(n=4):
    return [{"id": f"s{i}", "item_id": f"item-{i}", "task": "rg/chain_sum", "question": f"What is {i} + 1?",
             "choices": None, "answer": str(i + 1), "trial1": f"Thought: guess.\nAction: Finish[{i}]",
             "reflection": "I forgot to add one. Plan: add carefully.",
             "trial2": f"Thought: {i} + 1 = {i + 1}.\nAction: Finish[{i + 1}]"} for i in range(n)]


@pytest.fixture(autouse=True)
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """models/one_stage and models/two_stage: real LoRA adapters of tiny-random (2 steps each, lr 1e-2)."""
    import torch

    from reflectevo.config.presets import LoraConfig, ModelPreset
    from reflectevo.training.run import train_setting

    torch.set_num_threads(1)
    preset = ModelPreset(source="tiny-random", dtype="float32", gen_batch_size=16, max_length=2048,
                         lora=LoraConfig(r=4, alpha=8), lr_sft=1e-2)
    models = tmp_path_factory.mktemp("adapters") / "models"
    for setting in ("one_stage", "two_stage"):
        assert train_setting(setting, "tiny-random", preset, FP, dplus_rows(), [], CFG, models / setting)["trained"]
    return models, preset


def items_and_tasks(n=3):
    task = get_task("rg/chain_sum")
    return [Item(id=f"q{i}", task="rg/chain_sum", question=f"What is {i} + {i}?", answer=str(2 * i)) for i in range(n)], \
        {"rg/chain_sum": task}


# ------------------------------------------------------------------------------------------------------
# keys


def test_default_keys_are_unchanged_and_adapter_hashes_enter_the_key():
    items, tasks = items_and_tasks(1)
    cfg = GenerateConfig(k=2)
    plain = make_spec(FP, "float32", cfg)
    assert "adapters" not in plain.params()          # data/raw written before adapters keeps its keys
    a = make_spec(FP, "float32", cfg, adapters={"setting": "one_stage", "reflector": "aaaa", "corrector": "aaaa"})
    b = make_spec(FP, "float32", cfg, adapters={"setting": "one_stage", "reflector": "bbbb", "corrector": "bbbb"})
    keys = {s.episode_id(items[0], tasks["rg/chain_sum"]) for s in (plain, a, b)}
    assert len(keys) == 3
    assert a.params()["adapters"]["reflector"] == "aaaa"


def test_adapter_hash_is_by_content(tmp_path):
    for name, weights in (("a", b"1"), ("b", b"1"), ("c", b"2")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "adapter_config.json").write_text('{"r": 4}')
        (tmp_path / name / "adapter_model.safetensors").write_bytes(weights)
    assert adapter_hash(tmp_path / "a") == adapter_hash(tmp_path / "b") != adapter_hash(tmp_path / "c")
    with pytest.raises(ReflectEvoError, match="not a LoRA adapter folder"):
        adapter_hash(tmp_path)


def test_phases_go_to_their_backends():
    """Trial 1 by the base, reflections by the reflector, retries by the corrector."""
    items, tasks = items_and_tasks(2)
    base, refl, corr = (ScriptedBackend(arithmetic_responder()) for _ in range(3))
    spec = make_spec(FP, "float32", GenerateConfig(k=2, max_new_tokens_trial=16, max_new_tokens_reflection=16))
    eps = run_chunk(items, tasks, PhaseBackends(base, refl, corr), spec, Stats())
    assert all(len(ep["samples"]) == 2 for ep in eps)
    assert all("improves through self-reflection" in p for prompts, _ in refl.calls for p in prompts)
    assert sum(len(p) for p, _ in refl.calls) == 4 and sum(len(p) for p, _ in corr.calls) == 4
    assert sum(len(p) for p, _ in base.calls) == 2 and all("Reflection:" not in p for ps, _ in base.calls for p in ps)


# ------------------------------------------------------------------------------------------------------
# transformers + PEFT


def test_untrained_or_wrong_settings_are_refused(trained, tmp_path):
    models, _ = trained
    d = tmp_path / "dpo_pm"
    d.mkdir()
    (d / "model_card.json").write_text(json.dumps({"setting": "dpo_pm", "status": "no training data",
                                                   "reason": "D± is empty"}))
    with pytest.raises(ReflectEvoError, match=r"not trained \(no training data: D± is empty\)"):
        generation_adapters(d)
    with pytest.raises(ReflectEvoError, match="trained on preset 'tiny-random', not the params' model 'other'"):
        generation_adapters(models / "one_stage", "other")
    with pytest.raises(ReflectEvoError, match="no model_card.json"):
        generation_adapters(tmp_path / "missing")


def test_transformers_backend_generates_with_the_adapter(trained, tmp_path):
    models, preset = trained
    ad = generation_adapters(models / "two_stage", "tiny-random")
    assert set(ad.paths) == {"reflector", "corrector"} and ad.hashes["reflector"] != ad.hashes["corrector"]
    phases = build_phase_backends("tiny-random", preset, ad)
    assert len(phases.distinct()) == 3
    prompt = phases.trial.render([{"role": "user", "content": "What is 2 + 3?"}])
    scores = [b.score([prompt], [" Thought: 5"])[0] for b in phases.distinct()]
    assert len({round(s, 5) for s in scores}) == 3        # base, reflector and corrector are different models

    one = generation_adapters(models / "one_stage", "tiny-random")
    assert one.paths["reflector"] == one.paths["corrector"] == models / "one_stage"
    assert len(build_phase_backends("tiny-random", preset, one).distinct()) == 2   # the one adapter is loaded once

    # the episodes carry the adapters' hashes and differ from the base model's
    items, tasks = items_and_tasks(2)
    cfg = GenerateConfig(k=2, max_new_tokens_trial=8, max_new_tokens_reflection=8, temperature=0.8)
    plain_spec = make_spec(FP, "float32", cfg)
    spec = make_spec(FP, "float32", cfg, adapters=ad.key())
    from reflectevo.backends.registry import make_backend

    base_eps, _ = generate(items, tasks, lambda: make_backend("tiny-random", preset), plain_spec, tmp_path / "base",
                           progress=False)
    eps, _ = generate(items, tasks, lambda: phases, spec, tmp_path / "evolved", progress=False)
    for ep, b in zip(eps, base_eps):
        assert ep["gen"]["adapters"] == {"setting": "two_stage", "reflector": adapter_hash(models / "two_stage/reflector"),
                                         "corrector": adapter_hash(models / "two_stage/corrector")}
        assert ep["episode_id"] != b["episode_id"]
        assert ep["trial1"]["completion"] == b["trial1"]["completion"]     # trial 1 stays the base model's
        if ep["samples"]:
            assert [s["reflection"]["text"] for s in ep["samples"]] != [s["reflection"]["text"] for s in b["samples"]]


def test_generate_stage_takes_adapters(trained, tmp_path, monkeypatch):
    """stages/generate.py --adapters models/<setting>: keys and summary record the adapters."""
    import runpy

    import yaml
    from helpers import tiny_params_dict

    models, _ = trained
    root = Path(__file__).resolve().parents[1]
    p = tiny_params_dict(root / "params.yaml", tokens=6)
    p["models"]["tiny-random"]["lora"] = {"r": 4, "alpha": 8, "dropout": 0.0, "targets": ["q_proj", "k_proj", "v_proj", "o_proj"]}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    src = tmp_path / "train.jsonl"
    items, _ = items_and_tasks(2)
    src.write_text("".join(json.dumps(it.to_dict()) + "\n" for it in items))
    main = runpy.run_path(str(root / "stages/generate.py"), run_name="gen")["main"]
    main(params=tmp_path / "params.yaml", sources=src, out=tmp_path / "raw", summary=tmp_path / "gen.json",
         progress=False, shard=None, adapters=models / "one_stage")
    summary = json.loads((tmp_path / "gen.json").read_text())
    assert summary["adapters"]["setting"] == "one_stage"
    assert summary["adapters"]["phases"]["reflector"]["hash"] == adapter_hash(models / "one_stage")
    from reflectevo.episodes.shards import iter_episodes

    ep = next(iter(iter_episodes(tmp_path / "raw")))
    assert ep["gen"]["adapters"]["reflector"] == adapter_hash(models / "one_stage")


# ------------------------------------------------------------------------------------------------------
# vLLM (fake module) and OpenAI (reflectevo serve)


def test_vllm_requests_carry_each_phases_lora(trained, monkeypatch):
    models, preset = trained
    fake.install(monkeypatch)
    ad = generation_adapters(models / "two_stage", "tiny-random")
    phases = build_phase_backends("tiny-random", replace(preset, backend="vllm"), ad)
    (llm,) = fake.FakeLLM.instances                                   # one engine: base + both LoRAs
    assert llm.kw["enable_lora"] is True and llm.kw["max_loras"] >= 2
    assert phases.trial.lora is None
    assert phases.reflector.lora.lora_path == str((models / "two_stage/reflector").resolve())
    assert phases.corrector.lora.lora_path == str((models / "two_stage/corrector").resolve())
    items, tasks = items_and_tasks(2)
    spec = make_spec(FP, "float32", GenerateConfig(k=2, max_new_tokens_trial=8, max_new_tokens_reflection=8),
                     adapters=ad.key())
    run_chunk(items, tasks, phases, spec, Stats())
    by_lora = {}
    for call in llm.calls:
        by_lora.setdefault(None if call["lora"] is None else call["lora"].lora_path, []).extend(call["prompts"])
    assert set(by_lora) == {None, phases.reflector.lora.lora_path, phases.corrector.lora.lora_path}


def test_openai_backend_asks_reflectevo_serve_for_the_adapter(trained):
    pytest.importorskip("openai")
    from reflectevo.backends.hf import TransformersBackend
    from reflectevo.backends.openai_backend import OpenAIBackend
    from reflectevo.serve import make_server, start_in_thread

    models, preset = trained
    adapter = models / "one_stage"
    server = make_server("tiny-random", preset, port=0, adapters=[adapter])
    start_in_thread(server)
    try:
        name = served_name("tiny-random", adapter)
        assert set(server.backends) == {"tiny-random", name}
        client = replace(preset, backend="openai", api_base_url=server.url)
        remote = OpenAIBackend("tiny-random", client, adapter=adapter)
        assert remote.model == name
        base = OpenAIBackend("tiny-random", client)
        local = TransformersBackend("tiny-random", preset, adapter=adapter)
        prompt = local.render([{"role": "user", "content": "What is 2 + 3?"}])
        s = Sampling(6)
        assert remote.generate([prompt], s)[0].text == local.generate([prompt], s)[0].text
        assert base.generate([prompt], s)[0].text == TransformersBackend("tiny-random", preset).generate([prompt], s)[0].text
        gone = OpenAIBackend("tiny-random", client, adapter=models / "two_stage/reflector")   # not served here
        with pytest.raises(ReflectEvoError, match="does not exist"):
            gone.generate([prompt], s)
    finally:
        server.shutdown()
        server.server_close()


def test_generation_adapters_record_names_the_paths(trained):
    models, _ = trained
    ad = generation_adapters(models / "one_stage")
    assert isinstance(ad, GenerationAdapters)
    rec = ad.record()
    assert rec["phases"]["reflector"]["path"] == str(models / "one_stage")
    assert ad.key() == {"setting": "one_stage", "reflector": ad.hashes["reflector"], "corrector": ad.hashes["corrector"]}
