"""Generate-stage variants (w/o reflection, intrinsic, multi-round) and per-sample seeds.

Scripted backend for control flow; the synthetic tiny-random model (junk text, real sampling code) for
the claim that a sampled reflection depends on its seed only, not on the batch or chunk it ran in."""

import re

import pytest
from helpers import ScriptedBackend

from reflectevo.sampling import Sampling
from reflectevo.config.sections import GenerateConfig
from reflectevo.errors import ReflectEvoError
from reflectevo.generation.run import generate
from reflectevo.generation.keys import make_spec, sample_seed
from reflectevo.prompts import FAILURE_NOTICE
from reflectevo.tasks.registry import get_task

FP = {"preset": "scripted", "source": "none", "revision": "0"}


def _items(n=4):
    task = get_task("rg/chain_sum", {"min_terms": 2, "max_terms": 2, "max_digits": 1})
    return task.load("train", n), {task.name: task}


def _value(prompt: str) -> int:
    return eval(re.findall(r"problem: (.*?) =", prompt)[-1])  # noqa: S307 - our own arithmetic strings


def responder(right_t1=(), fix_at_round=1):
    """Trial 1 right for items whose value is in `right_t1`; a retry becomes right after `fix_at_round`
    reflections (counted from the number of 'Reflection:' blocks seen for that item)."""
    seen: dict[int, int] = {}

    def respond(prompt: str, sampling: Sampling) -> str:
        if "self-reflection" in prompt:
            return "I made an arithmetic slip. Plan: add the terms again, one at a time."
        v = _value(prompt)
        if "Reflection:" not in prompt and "before" not in prompt:   # trial 1
            return f"Thought: add.\nAction: Finish[{v if v in right_t1 else 999999}]"
        seen[v] = seen.get(v, 0) + 1
        return f"Thought: again.\nAction: Finish[{v if seen[v] >= fix_at_round else 999999}]"

    return respond


def test_without_reflection_retry_sees_notice_and_attempt_only(tmp_path):
    items, tasks = _items()
    backend = ScriptedBackend(responder())
    spec = make_spec(FP, "float32", GenerateConfig(k=3, reflect=False))
    eps, _ = generate(items, tasks, lambda: backend, spec, tmp_path, progress=False)
    for ep in eps:
        assert len(ep["samples"]) == 1                     # greedy retry: one, not k identical copies
        s = ep["samples"][0]
        assert s["reflection"] is None and s["demand_id"] is None
        p = s["trial2"]["prompt"]
        assert "judged incorrect" in p and ep["trial1"]["completion"].strip() in p
        assert "Reflection:" not in p
    assert [c[1].temperature for c in backend.calls] == [0.0, 0.0]   # no reflection pass at all


def test_intrinsic_reflects_on_every_item_without_feedback(tmp_path):
    items, tasks = _items()
    values = [int(it.answer) for it in items]
    backend = ScriptedBackend(responder(right_t1=set(values[:2])))
    spec = make_spec(FP, "float32", GenerateConfig(k=2, protocol="intrinsic"))
    eps, _ = generate(items, tasks, lambda: backend, spec, tmp_path, progress=False)
    right = [ep["trial1"]["correct"] for ep in eps]
    assert right == [v in values[:2] for v in values] and True in right and False in right
    for ep in eps:
        assert len(ep["samples"]) == 2                      # right trial 1 reflected on too
        for s in ep["samples"]:
            for prompt in (s["reflection"]["prompt"], s["trial2"]["prompt"]):
                assert FAILURE_NOTICE not in prompt and "incorrect" not in prompt
            assert s["demand_id"] is None


def test_multi_round_continues_until_fixed_and_reflects_on_latest_retry(tmp_path):
    items, tasks = _items(2)
    backend = ScriptedBackend(responder(fix_at_round=2))
    spec = make_spec(FP, "float32", GenerateConfig(k=1, rounds=3))
    eps, _ = generate(items, tasks, lambda: backend, spec, tmp_path, progress=False)
    for ep in eps:
        s = ep["samples"][0]
        assert not s["trial2"]["correct"]                   # round 1 still wrong
        assert [r["round"] for r in s["later_rounds"]] == [2]   # fixed in round 2: round 3 not run (oracle)
        r2 = s["later_rounds"][0]
        assert r2["trial"]["correct"]
        assert s["trial2"]["completion"].strip() in r2["reflection"]["prompt"]   # reflects on the latest retry
        assert r2["reflection"]["sampling"]["seed"] != s["reflection"]["sampling"]["seed"]


def test_variant_and_rounds_are_part_of_the_key():
    items, tasks = _items(1)
    keys = {make_spec(FP, "float32", GenerateConfig(**kw)).episode_id(items[0], tasks[items[0].task])
            for kw in ({}, {"reflect": False}, {"protocol": "intrinsic"}, {"rounds": 2})}
    assert len(keys) == 4


def test_bad_variant_values_are_rejected():
    with pytest.raises(ReflectEvoError, match="Did you mean 'intrinsic'"):
        GenerateConfig(protocol="intrinsik").validate("generate")
    with pytest.raises(ReflectEvoError, match="generate.rounds"):
        GenerateConfig(rounds=0).validate("generate")


def test_every_sample_gets_its_own_seed(tmp_path):
    items, tasks = _items(3)
    backend = ScriptedBackend(responder())
    spec = make_spec(FP, "float32", GenerateConfig(k=2))
    eps, _ = generate(items, tasks, lambda: backend, spec, tmp_path, progress=False)
    seeds = [s["reflection"]["sampling"]["seed"] for ep in eps for s in ep["samples"]]
    assert len(set(seeds)) == len(seeds) == 6
    assert backend.seeds[1] == seeds                         # what the backend was given
    assert seeds[0] == sample_seed(eps[0]["episode_id"], 0, 1)


def test_sampled_reflections_do_not_depend_on_chunking(tmp_path, tiny_preset):
    """Real sampling (tiny-random model): one chunk of 6 vs chunks of 1 vs another batch size give the same
    reflections key for key, because each sample's seed and random generator are its own."""
    from reflectevo.backends.hf import TransformersBackend

    items, tasks = _items(6)
    spec = make_spec(FP, "float32", GenerateConfig(k=2, max_new_tokens_trial=8, max_new_tokens_reflection=10))
    backend = TransformersBackend("tiny-random", tiny_preset)
    runs = []
    for chunk, batch in ((6, 16), (1, 16), (4, 3)):
        backend.batch_size = batch
        eps, _ = generate(items, tasks, lambda: backend, spec, tmp_path / f"{chunk}-{batch}", chunk_size=chunk,
                          progress=False)
        runs.append({s["sample_id"]: s["reflection"]["text"] for ep in eps for s in ep["samples"]})
    assert runs[0] and len(runs[0]) == 12
    assert runs[0] == runs[1] == runs[2]
    assert len(set(runs[0].values())) > 1                    # and they are real samples, not one text
