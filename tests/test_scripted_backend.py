"""The scripted backend (`backend: scripted`): the real generate loop, verifiers and keys, no model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from reflectevo.backends.registry import backend_sampler, make_backend
from reflectevo.config.sections import GenerateConfig
from reflectevo.config.presets import ModelPreset, ScriptRecipe, load_preset
from reflectevo.config.loader import from_dict
from reflectevo.config.params import read_params
from reflectevo.errors import ReflectEvoError
from reflectevo.generation.run import generate
from reflectevo.generation.keys import make_spec
from reflectevo.models.load import check_available
from reflectevo.models.fingerprint import model_fingerprint
from reflectevo.tasks.registry import get_task

ROOT = Path(__file__).resolve().parents[1]


def _setup(n: int, **recipe):
    task = get_task("rg/chain_sum", {"min_terms": 2, "max_terms": 3, "max_digits": 2})
    items = task.load("train", n)
    preset = ModelPreset(source="scripted", backend="scripted", gen_batch_size=32, script=ScriptRecipe(**recipe))
    cfg = GenerateConfig(k=3, max_new_tokens_trial=512, max_new_tokens_reflection=512)
    spec = make_spec(model_fingerprint("scripted", preset), preset.dtype, cfg, sampler=backend_sampler("scripted"))
    return items, {task.name: task}, preset, spec


def test_rates_lengths_and_verdicts_follow_the_recipe(tmp_path):
    items, tasks, preset, spec = _setup(300, trial1_correct=0.4, retry_correct=0.25)
    eps, stats = generate(items, tasks, lambda: make_backend("scripted", preset), spec, tmp_path, chunk_size=64,
                          progress=False)
    assert stats.computed == 300
    t1 = sum(ep["trial1"]["correct"] for ep in eps) / len(eps)
    samples = [s for ep in eps for s in ep["samples"]]
    t2 = sum(s["trial2"]["correct"] for s in samples) / len(samples)
    assert 0.32 < t1 < 0.48 and 0.18 < t2 < 0.32            # the verifier agrees with the recipe's draws
    assert len(samples) == 3 * sum(not ep["trial1"]["correct"] for ep in eps)
    words = [len(s["reflection"]["text"].split()) for s in samples]
    assert 220 < sum(words) / len(words) < 280               # ReflectEvo-460K: 250 on average
    assert all("Finish[" not in s["reflection"]["text"] for s in samples)   # never states the answer
    for ep in eps:                                           # a wrong answer is still an answer (no format failure)
        assert ep["trial1"]["extracted"] is not None and ep["trial1"]["stop_reason"] == "stop"


def test_same_episodes_whatever_the_chunking_and_budget_cuts(tmp_path):
    items, tasks, preset, spec = _setup(40)
    a, _ = generate(items, tasks, lambda: make_backend("scripted", preset), spec, tmp_path / "a", chunk_size=7,
                    progress=False)
    b, _ = generate(items, tasks, lambda: make_backend("scripted", preset), spec, tmp_path / "b", chunk_size=40,
                    progress=False)
    assert a == b
    short = dataclasses.replace(spec, cfg=GenerateConfig(k=2, max_new_tokens_trial=16, max_new_tokens_reflection=10))
    c, _ = generate(items, tasks, lambda: make_backend("scripted", preset), short, tmp_path / "c", progress=False)
    refl = [s["reflection"] for ep in c for s in ep["samples"]]
    assert refl and all(r["n_new_tokens"] <= 10 and len(r["text"].split()) <= 10 for r in refl)
    assert all(ep["trial1"]["extracted"] is not None for ep in c)   # the answer fits the cut trial


def test_recipe_is_part_of_the_key_and_the_preset_is_checked():
    base = ModelPreset(source="scripted", backend="scripted")
    other = dataclasses.replace(base, script=ScriptRecipe(retry_correct=0.5))
    assert model_fingerprint("s", base) != model_fingerprint("s", other)
    assert check_available("s", base) == ""                  # nothing to download
    with pytest.raises(ReflectEvoError, match="both source: scripted and backend: scripted"):
        from_dict(ModelPreset, {"source": "scripted"}, "models.s")
    with pytest.raises(ReflectEvoError, match=r"models.s.script.retry_correct: must be in \[0, 1\]"):
        from_dict(ModelPreset, {"source": "scripted", "backend": "scripted", "script": {"retry_correct": 2}}, "models.s")
    with pytest.raises(ReflectEvoError, match="Did you mean .retry_correct."):
        from_dict(ModelPreset, {"source": "scripted", "backend": "scripted", "script": {"retry_corect": 0.1}},
                  "models.s")
    _, preset = load_preset(read_params(ROOT / "params.yaml"), "scripted")   # the shipped preset loads
    assert preset.backend == "scripted"
