"""Evaluation protocols with a scripted backend: who gets reflected, what the prompts reveal, transitions."""

import re

import pytest
from helpers import ScriptedBackend

from reflectevo import evaluation as ev
from reflectevo.config.sections import EvaluateConfig
from reflectevo.tasks import Item
from reflectevo.tasks.registry import get_task

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
    from reflectevo.config.loader import from_dict
    from reflectevo.errors import ReflectEvoError

    with pytest.raises(ReflectEvoError, match="unknown protocol 'intrinsc'. Did you mean 'intrinsic'"):
        from_dict(EvaluateConfig, {"protocol": "intrinsc"}, "evaluate")


def slow_fixer(prompt, sampling):
    """q1 is fixed at the second retry, q3 never; q0/q2 right at trial 1 (q2 turns wrong on any retry)."""
    if "improves through self-reflection" in prompt:
        return "Re-check the addition step by step."
    i = int(re.findall(r"Q(\d+)", prompt)[-1])
    if "attempted this question before" not in prompt:
        return f"Thought: ok.\nAction: Finish[{i + 1 if i % 2 == 0 else 99}]"
    prev = re.findall(r"Finish\[(\d+)\]", prompt.split("Question number")[-1])
    fixed = i == 1 and prev and prev[-1] == "77"   # the second retry (after a 77) is right
    return f"Thought: ok.\nAction: Finish[{i + 1 if fixed else 77}]"


def run_rounds(protocol, rounds):
    cfg = EvaluateConfig(protocol=protocol, rounds=rounds, max_new_tokens_trial=8, max_new_tokens_reflection=8)
    backend = ScriptedBackend(slow_fixer)
    tasks = {TASK.name: TASK}
    t1 = ev.trial1(ITEMS, tasks, backend, cfg)
    systems = {"base_reflect": ev.reflect_then_retry(ITEMS, tasks, t1, backend, backend, cfg),
               "base_noreflect": ev.retry_without_reflection(ITEMS, tasks, t1, backend, cfg)}
    return systems, ev.summarize(systems)


def test_multi_round_oracle_accuracy_by_round():
    systems, m = run_rounds("oracle", 3)
    for name in ("base_reflect", "base_noreflect"):
        o = m[name]["overall"]
        # t1: q0,q2 right; round 1: nobody fixed; round 2: q1 fixed; round 3: q3 still wrong
        assert o["acc_by_round"] == [0.5, 0.5, 0.75, 0.75]
        assert (o["acc_t1"], o["acc_t2"], o["acc_final"], o["delta_final"]) == (0.5, 0.5, 0.75, 0.25)
        rows = {r["item_id"]: r for r in systems[name]}
        assert [x["round"] for x in rows["q1"]["rounds"]] == [2]          # fixed: no round 3 (oracle)
        assert [x["round"] for x in rows["q3"]["rounds"]] == [2, 3]
        assert "rounds" not in rows["q0"] and rows["q0"]["correct_by_round"] == [True] * 4
        # round 2 looks at round 1's retry, not at trial 1
        assert "Finish[77]" in rows["q1"]["rounds"][0]["t2_prompt"]
    by_round, transitions = ev.plot_rows(systems)
    assert [r["accuracy"] for r in by_round if r["system"] == "base_reflect"] == [0.5, 0.5, 0.75, 0.75]
    t = {(r["trial1"], r["final"]): r["count"] for r in transitions if r["system"] == "base_reflect"}
    assert t == {("correct", "correct"): 2, ("correct", "incorrect"): 0, ("incorrect", "correct"): 1,
                 ("incorrect", "incorrect"): 1}


def test_multi_round_intrinsic_every_round_counts():
    systems, m = run_rounds("intrinsic", 2)
    o = m["base_reflect"]["overall"]
    # round 1: every retry says 77 (q0, q2 turn wrong); round 2: q1 fixed from its 77
    assert o["acc_by_round"] == [0.5, 0.0, 0.25]
    assert o["delta_c2i"] == 0.5
    assert all(len(r["rounds"]) == 1 for r in systems["base_reflect"])  # everyone goes on


def test_one_round_keeps_the_table_2_fields():
    _, m = run_rounds("oracle", 1)
    o = m["base_reflect"]["overall"]
    assert o["acc_by_round"] == [o["acc_t1"], o["acc_t2"]] and "acc_final" not in o
