"""Evaluation protocols with a scripted backend: who gets reflected, what the prompts reveal, transitions."""

import re

import pytest
from helpers import ScriptedBackend

from reflectevo import evaluation as ev
from reflectevo.config import EvaluateConfig
from reflectevo.tasks import Item, get_task

TASK = get_task("rg/chain_sum")
ITEMS = [Item(id=f"q{i}", task=TASK.name, question=f"Question number Q{i}: what is {i} + 1?", answer=str(i + 1))
         for i in range(4)]
FEEDBACK = re.compile(r"incorrect|unsuccessful|wrong answer", re.I)


def responder(prompt, sampling):
    if "improves through self-reflection" in prompt:
        return "I should re-check the addition."
    i = int(re.findall(r"Q(\d+)", prompt)[-1])
    retry = "attempted this question before" in prompt
    right = i < 2 if retry else i % 2 == 0   # t1: q0,q2 right; retry: q0,q1 right -> q1 i->c, q2 c->i
    return f"Thought: ok.\nAction: Finish[{i + 1 if right else 99}]"


def run(protocol):
    cfg = EvaluateConfig(protocol=protocol, max_new_tokens_trial=8, max_new_tokens_reflection=8, limit=0)
    backend = ScriptedBackend(responder)
    tasks = {TASK.name: TASK}
    t1 = ev.trial1(ITEMS, tasks, backend, cfg)
    return backend, ev.summarize({"base_reflect": ev.reflect_then_retry(ITEMS, tasks, t1, backend, backend, cfg),
                                  "base_noreflect": ev.retry_without_reflection(ITEMS, tasks, t1, backend, cfg)})


def test_oracle_reflects_only_failures_and_says_so():
    backend, m = run("oracle")
    reflect_prompts = [p for ps, _ in backend.calls for p in ps if "improves through self-reflection" in p]
    assert sorted(re.findall(r"Q(\d+)", p)[-1] for p in reflect_prompts) == ["1", "3"]
    assert all(FEEDBACK.search(p) for p in reflect_prompts)
    o = m["base_reflect"]["overall"]
    assert (o["acc_t1"], o["acc_t2"], o["delta_i2c"], o["delta_c2i"]) == (0.5, 0.75, 0.25, 0.0)


def test_intrinsic_reflects_on_everything_without_feedback_and_counts_c2i():
    backend, m = run("intrinsic")
    sent = [p for ps, _ in backend.calls for p in ps]
    assert not any(FEEDBACK.search(p) for p in sent)          # the model is never told it was wrong
    reflect_prompts = [p for p in sent if "improves through self-reflection" in p]
    assert len(reflect_prompts) == 4
    for system in ("base_reflect", "base_noreflect"):
        o = m[system]["overall"]
        assert (o["acc_t1"], o["acc_t2"], o["delta_i2c"], o["delta_c2i"]) == (0.5, 0.5, 0.25, 0.25)


def test_unknown_protocol():
    from reflectevo.config import from_dict
    from reflectevo.errors import ReflectEvoError

    with pytest.raises(ReflectEvoError, match="unknown protocol 'intrinsc'. Did you mean 'intrinsic'"):
        from_dict(EvaluateConfig, {"protocol": "intrinsc"}, "evaluate")
