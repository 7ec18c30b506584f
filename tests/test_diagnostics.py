"""Run diagnostics of episodes and predictions: format failures, repeat and fix rates, stop reasons,
tokens per phase; and the likelihood judge that ranks fixing reflections for Dpref."""

from __future__ import annotations

from reflectevo.diagnostics import episode_diagnostics, prediction_diagnostics
from reflectevo.judge import Comparison, answer_split, likelihood_judge


def _trial(extracted, correct, stop="stop", p=100, n=10):
    return {"extracted": extracted, "correct": correct, "stop_reason": stop, "n_prompt_tokens": p, "n_new_tokens": n}


def _episode(task, t1, samples):
    return {"task": task, "trial1": t1,
            "samples": [{"demand_id": d, "reflection": {"stop_reason": rs, "n_prompt_tokens": 50, "n_new_tokens": 20},
                         "trial2": t2} for d, rs, t2 in samples]}


def test_episode_diagnostics_counts_repeats_fixes_and_format_failures():
    eps = [
        _episode("a", _trial("3", False), [("1-1-1", "eos", _trial("3", False)),        # a repeat
                                           ("1-1-2", "length", _trial("5", True))]),     # a fix
        _episode("a", _trial(None, False, "length"), [("1-1-1", "stop", _trial(None, False, "length"))]),
        _episode("b", _trial("x", True), []),
    ]
    d = episode_diagnostics(eps)
    o = d["overall"]
    assert (o["items"], o["trial1_correct"], o["trial1_format_failures"]) == (3, 1, 1)
    assert (o["samples"], o["fixes"], o["repeats"], o["trial2_format_failures"]) == (3, 1, 1, 1)
    assert o["fix_rate"] == round(1 / 3, 4) and o["repeat_rate"] == round(1 / 3, 4)
    assert o["stop_reasons"] == {"trial1": {"length": 1, "stop": 2}, "reflection": {"eos": 1, "length": 1, "stop": 1},
                                 "trial2": {"length": 1, "stop": 2}}
    assert o["tokens"]["reflection"] == {"calls": 3, "prompt": 150, "new": 60, "mean_prompt": 50.0, "mean_new": 20.0}
    assert d["per_task"]["b"]["samples"] == 0 and d["per_task"]["a"]["fixes"] == 1
    assert d["per_demand"]["1-1-2"]["fix_rate"] == 1.0 and d["per_demand"]["1-1-1"]["repeats"] == 1


def test_prediction_diagnostics_per_system():
    rows = [{"task": "a", "t1_correct": False, "t1_answer": "3", "t1_stop": "stop", "t2": "..", "t2_answer": "3",
             "t2_correct": False, "t2_stop": "stop", "reflection_stop": "length", "reflection_new_tokens": 64},
            {"task": "a", "t1_correct": False, "t1_answer": "3", "t2": "..", "t2_answer": "4", "t2_correct": True},
            {"task": "a", "t1_correct": True, "t1_answer": "9"}]
    d = prediction_diagnostics({"base_reflect": rows})["base_reflect"]["overall"]
    assert (d["items"], d["samples"], d["fixes"], d["repeats"]) == (3, 2, 1, 1)
    assert d["fix_rate"] == 0.5 and d["stop_reasons"]["reflection"] == {"length": 1}


def test_answer_split():
    assert answer_split(" 3 + 4 = 7.\nAction: Finish[7]") == (" 3 + 4 = 7.\nAction: Finish[", "7]")
    assert answer_split("x Finish<<<\\frac{1}{2}>>> y") == ("x Finish<<<", "\\frac{1}{2}>>>")
    assert answer_split("no answer") is None and answer_split("Finish[7") is None


class _Scorer:
    name = "transformers"

    def __init__(self, table):
        self.table, self.calls = table, []

    def score(self, prompts, conts):
        self.calls.append(list(zip(prompts, conts)))
        return [self.table[p] for p in prompts]


def test_likelihood_judge_prefers_the_reflection_that_makes_the_answer_likelier():
    c = Comparison("q", "t", "r1", "r2", first_retry=("P1", " 7.\nAction: Finish[7]"),
                   second_retry=("P2", " 7.\nAction: Finish[7]"))
    scorer = _Scorer({"P1 7.\nAction: Finish[": -2.0, "P2 7.\nAction: Finish[": -0.5, "P2 Finish[": -1.0})
    out = likelihood_judge([c, Comparison("q", "t", "a", "b", ("P1", "x"), ("P2", " Finish[7]"))], scorer)
    assert out[0] == {"winner": 1, "votes": [-2.0, -0.5]}
    assert out[1]["winner"] is None                      # a retry without a complete answer: no verdict
    assert scorer.calls[0][0] == ("P1 7.\nAction: Finish[", "7]")
    tie = _Scorer({"P1 7.\nAction: Finish[": -1.0, "P2 7.\nAction: Finish[": -1.0})
    assert likelihood_judge([c], tie)[0]["winner"] is None


def test_likelihood_judge_scores_with_the_real_backend(tiny_preset):
    from reflectevo.backends.registry import make_backend

    b = make_backend("tiny-random", tiny_preset)
    p = b.render([{"role": "user", "content": "What is 3 + 4?"}]) + "Thought:"
    s = b.score([p, p], [" Finish[7]", " Finish[7] Finish[7]"])
    assert s[0] < 0 and s[1] < s[0]                      # a longer continuation has a lower log-probability
    assert likelihood_judge([Comparison("q", "t", "a", "b", (p, " 7. Finish[7]"), (p, " 8 - 1 = 7. Finish[7]"))],
                            b)[0]["winner"] in (0, 1)


def test_score_equals_a_full_forward_pass(tiny_preset):
    """The left-padded, last-positions-only, shared-head scoring equals log-softmax over a plain forward."""
    import torch

    from reflectevo.backends.registry import make_backend

    b = make_backend("tiny-random", tiny_preset)
    head = "A shared head of several words, long enough to be computed once. " * 3
    prompts = [b.render([{"role": "user", "content": head + q}]) for q in ("one", "two three four")]
    conts = [" Finish[7]", " 5 Finish[75]"]
    got = b.score(prompts, conts)
    for p, c, g in zip(prompts, conts, got):
        ids_p = b.tokenizer(p, add_special_tokens=False)["input_ids"]
        ids_c = b.tokenizer(c, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            logp = b.model(input_ids=torch.tensor([ids_p + ids_c])).logits.float().log_softmax(-1)[0]
        want = sum(float(logp[len(ids_p) - 1 + i, t]) for i, t in enumerate(ids_c))
        assert abs(g - want) < 1e-3
