"""Protocol tests with a scripted backend (no model): control flow, leak rules, reuse, resume."""

import pytest
from helpers import ScriptedBackend, arithmetic_responder

from reflectevo.config.sections import GenerateConfig
from reflectevo.generation.run import JOURNAL, generate, write_shards
from reflectevo.episodes.shards import load_episodes
from reflectevo.generation.keys import make_spec
from reflectevo.tasks import Item
from reflectevo.tasks.registry import get_task

FP = {"preset": "scripted", "source": "none", "revision": "0"}


def _items(n=6):
    task = get_task("rg/chain_sum", {"min_terms": 2, "max_terms": 2, "max_digits": 1})
    items = task.load("train", n)
    return items, {task.name: task}


def test_protocol_flow_and_records(tmp_path):
    items, tasks = _items(4)
    backend = ScriptedBackend(arithmetic_responder())
    spec = make_spec(FP, "float32", GenerateConfig(k=3, demands=("1-1-1", "2-8-2")))
    eps, stats = generate(items, tasks, lambda: backend, spec, tmp_path, chunk_size=2, progress=False)
    assert len(eps) == 4 and stats.reused == 0
    for ep, it in zip(eps, items):
        assert ep["item_id"] == it.id and not ep["trial1"]["correct"]
        assert len(ep["samples"]) == 3
        assert {s["demand_id"] for s in ep["samples"]} <= {"1-1-1", "2-8-2"}
        for s in ep["samples"]:
            assert s["trial2"]["correct"]                       # the scripted retry fixes it
            assert ep["trial1"]["completion"] in s["reflection"]["prompt"]   # sees trial 1 ...
            assert s["trial2"]["completion"] not in s["reflection"]["prompt"]  # ... never a retry
            assert s["reflection"]["sampling"]["temperature"] == 0.8
        assert ep["model"] == FP and ep["prompt_version"].startswith("v2-")
    # greedy trials, sampled reflections
    temps = [c[1].temperature for c in backend.calls]
    assert temps == [0.0, 0.8, 0.0, 0.0, 0.8, 0.0]


def test_gold_never_reaches_reflection_or_trial2_prompts(tmp_path):
    task = get_task("rg/chain_sum")
    items = [Item(id=f"leak-{i}", task=task.name, question=f"State the final answer: {i} + 1 =",
                  answer=f"GOLDTOKEN{i}XYZ") for i in range(5)]
    backend = ScriptedBackend(lambda p, s: "Thought: hmm\nAction: Finish[1]")
    spec = make_spec(FP, "float32", GenerateConfig(k=2))
    eps, _ = generate(items, {task.name: task}, lambda: backend, spec, tmp_path, progress=False)
    sent = [p for prompts, _ in backend.calls for p in prompts]
    assert len(sent) == 5 + 10 + 10
    for i, ep in enumerate(eps):
        for s in ep["samples"]:
            assert f"GOLDTOKEN{i}XYZ" not in s["reflection"]["prompt"]
            assert f"GOLDTOKEN{i}XYZ" not in s["trial2"]["prompt"]
    assert not any("GOLDTOKEN" in p for p in sent)


def test_prompts_are_stored_exactly_as_sent(tmp_path):
    items, tasks = _items(2)
    backend = ScriptedBackend(arithmetic_responder())
    eps, _ = generate(items, tasks, lambda: backend, make_spec(FP, "float32", GenerateConfig(k=1)), tmp_path,
                      progress=False)
    sent = [p for prompts, _ in backend.calls for p in prompts]
    stored = [ep["trial1"]["prompt"] for ep in eps] + [s["reflection"]["prompt"] for ep in eps for s in ep["samples"]] \
        + [s["trial2"]["prompt"] for ep in eps for s in ep["samples"]]
    assert sorted(sent) == sorted(stored)


def test_rerun_reuses_everything_and_new_items_only_compute_new(tmp_path):
    items, tasks = _items(6)
    spec = make_spec(FP, "float32", GenerateConfig(k=1))
    b1 = ScriptedBackend(arithmetic_responder())
    eps, _ = generate(items[:4], tasks, lambda: b1, spec, tmp_path, progress=False)
    write_shards(tmp_path, eps, shard_size=3)
    assert len(list(tmp_path.glob("episodes-*.parquet"))) == 2 and not (tmp_path / JOURNAL).exists()

    def never():
        raise AssertionError("backend must not be built when nothing is missing")

    again, stats = generate(items[:4], tasks, never, spec, tmp_path, progress=False)
    assert stats.reused == 4 and again == eps
    b2 = ScriptedBackend(arithmetic_responder())
    grown, stats = generate(items, tasks, lambda: b2, spec, tmp_path, progress=False)
    assert stats.reused == 4 and len(grown) == 6
    assert len(b2.calls[0][0]) == 2          # only the two new items went to the model


def test_changed_param_changes_keys(tmp_path):
    items, tasks = _items(2)
    a = make_spec(FP, "float32", GenerateConfig(k=1))
    b = make_spec(FP, "float32", GenerateConfig(k=1, temperature=0.5))
    task = tasks["rg/chain_sum"]
    assert a.episode_id(items[0], task) != b.episode_id(items[0], task)
    assert a.episode_id(items[0], task) == make_spec(FP, "float32", GenerateConfig(k=1)).episode_id(items[0], task)

    class OtherShots(type(task)):  # same task, different worked example -> different prompts -> new key
        def fewshot(self):
            return [("What is 1 + 1?", "Thought: one and one.\nAction: Finish[2]")]

    other = OtherShots("chain_sum", task.options)
    assert a.episode_id(items[0], other) != a.episode_id(items[0], task)


def test_the_backends_sampler_is_part_of_the_key():
    """vLLM draws with its own per-request seeded sampler, an endpoint with whatever it runs: the same seed
    gives other reflections, so a vllm, an openai and a transformers episode of one item never share a key.
    The transformers key is what it was (episodes already in data/raw stay reusable)."""
    import subprocess
    import sys

    from reflectevo.backends.registry import backend_sampler
    from reflectevo.backends.hf import TransformersBackend
    from reflectevo.generation.keys import SAMPLER

    items, tasks = _items(1)
    task = tasks["rg/chain_sum"]
    cfg = GenerateConfig(k=1)
    keys = {b: make_spec(FP, "float32", cfg, sampler=backend_sampler(b)).episode_id(items[0], task)
            for b in ("transformers", "vllm", "openai")}
    assert len(set(keys.values())) == 3
    assert keys["transformers"] == make_spec(FP, "float32", cfg).episode_id(items[0], task)
    assert backend_sampler("transformers") == TransformersBackend.sampler == SAMPLER == "per-sample-seed-v2"
    spec = make_spec(FP, "float32", cfg, sampler=backend_sampler("vllm"))
    assert spec.params()["sampler"] == backend_sampler("vllm") != SAMPLER
    code = ("import sys; from reflectevo.backends.registry import backend_sampler; backend_sampler('vllm'); "
            "backend_sampler('openai'); assert 'vllm' not in sys.modules and 'openai' not in sys.modules")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr                 # the tag comes without building (or importing) the backend


def test_the_dtype_the_model_runs_in_is_part_of_the_key(monkeypatch):
    """`dtype: auto` runs in fp32 on a CPU without fast bf16 and in bf16 on a GPU: the episodes differ, so their
    keys must (a GPU run never reuses CPU episodes from data/raw). A preset with an explicit dtype keeps its key;
    backends without weights here (scripted, openai) keep the preset's setting."""
    import torch

    import reflectevo.models.load as load
    from reflectevo.backends.registry import backend_dtype
    from reflectevo.config.presets import ModelPreset

    items, tasks = _items(1)
    task, cfg = tasks["rg/chain_sum"], GenerateConfig(k=1)
    auto = ModelPreset(source="tiny-random", dtype="auto")
    resolved = {}
    for machine, dtype in (("cpu", torch.float32), ("gpu", torch.bfloat16)):
        monkeypatch.setattr(load, "resolve_dtype", lambda setting, d=dtype: d if setting == "auto" else torch.float32)
        resolved[machine] = backend_dtype(auto)
    assert resolved == {"cpu": "float32", "gpu": "bfloat16"}
    keys = {m: make_spec(FP, "auto", cfg, resolved_dtype=d).episode_id(items[0], task) for m, d in resolved.items()}
    assert keys["cpu"] != keys["gpu"]
    # an explicit dtype resolves to itself: the key is the one it always was
    assert make_spec(FP, "float32", cfg, resolved_dtype="float32").episode_id(items[0], task) == \
        make_spec(FP, "float32", cfg).episode_id(items[0], task)
    assert backend_dtype(ModelPreset(source="scripted", backend="scripted")) == "auto"


def test_crash_keeps_finished_chunks_and_resume_completes(tmp_path):
    items, tasks = _items(6)
    spec = make_spec(FP, "float32", GenerateConfig(k=1))
    calls = {"n": 0}
    inner = arithmetic_responder()

    def flaky(prompt, sampling):
        calls["n"] += 1
        if calls["n"] > 2 * 6:  # 6 calls per chunk of 2 (k=1): dies in the third chunk
            raise KeyboardInterrupt("killed")
        return inner(prompt, sampling)

    with pytest.raises(KeyboardInterrupt):
        generate(items, tasks, lambda: ScriptedBackend(flaky), spec, tmp_path, chunk_size=2, progress=False)
    saved = load_episodes(tmp_path)
    assert len(saved) == 4                     # two finished chunks were journaled
    b = ScriptedBackend(inner)
    eps, stats = generate(items, tasks, lambda: b, spec, tmp_path, chunk_size=2, progress=False)
    assert stats.reused == 4 and len(eps) == 6
    assert sum(len(p) for p, s in b.calls if s.temperature == 0.0 and "Reflection:" not in p[0]) == 2
