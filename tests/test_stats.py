"""Paired statistics: exact McNemar against known values, the bootstrap interval, and their place in
metrics/eval.json (every system t1 vs t2; trained settings against both prompt baselines)."""

from __future__ import annotations

import math

import pytest

from reflectevo.evaluation import summarize
from reflectevo.stats import aligned, bootstrap_delta_ci, mcnemar_exact, paired_test


def test_mcnemar_exact_known_values():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == 1.0
    # 10 vs 0 discordant: 2 / 2**10
    assert mcnemar_exact(10, 0) == pytest.approx(2 / 1024, rel=1e-3)
    # b=8, c=2: 2 * P(X <= 2), X ~ Bin(10, 1/2) = 2 * 56 / 1024
    assert mcnemar_exact(8, 2) == pytest.approx(2 * 56 / 1024, rel=1e-3)
    assert mcnemar_exact(2, 8) == mcnemar_exact(8, 2)
    # agrees with scipy's exact binomial test
    from scipy.stats import binomtest

    for b, c in ((3, 17), (30, 12), (1, 0)):
        assert mcnemar_exact(b, c) == pytest.approx(binomtest(min(b, c), b + c, 0.5).pvalue, rel=1e-3)
    assert 0 < mcnemar_exact(27, 0) == pytest.approx(2 / 2 ** 27, rel=1e-3)   # tiny p-values are not rounded to 0
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


def test_paired_test_counts_discordant_items():
    first = [True, True, False, False, False]
    second = [True, False, True, True, False]
    assert paired_test(first, second) == {"n": 5, "b": 2, "c": 1, "p": mcnemar_exact(2, 1)}
    with pytest.raises(ValueError):
        paired_test([True], [True, False])


def test_bootstrap_interval_covers_the_delta_and_is_deterministic():
    t1 = [False] * 60 + [True] * 40
    t2 = [True] * 20 + [False] * 40 + [True] * 40      # delta = +0.2
    ci = bootstrap_delta_ci(t1, t2)
    assert ci[0] < 0.2 < ci[1] and ci[0] > 0.1 and ci == bootstrap_delta_ci(t1, t2)
    assert bootstrap_delta_ci([], []) is None
    assert bootstrap_delta_ci([True] * 5, [True] * 5) == [0.0, 0.0]


def test_aligned_matches_items_by_id():
    a = [{"item_id": "x", "ok": True}, {"item_id": "y", "ok": False}, {"item_id": "z", "ok": True}]
    b = [{"item_id": "y", "ok": True}, {"item_id": "x", "ok": True}]
    assert aligned(a, b, "ok", "ok") == ([True, False], [True, True])


def _rows(t1, t2, task="t"):
    return [{"item_id": str(i), "task": task, "t1_correct": a, "t2_correct": b, "correct_by_round": [a, b],
             "final_correct": b} for i, (a, b) in enumerate(zip(t1, t2))]


def test_summarize_adds_paired_statistics_per_system_and_task():
    t1 = [False] * 30 + [True] * 10
    base = _rows(t1, t1)                                   # the baseline fixes nothing
    trained = _rows(t1, [True] * 12 + [False] * 18 + [True] * 10)
    sft = _rows([True] * 15 + [False] * 25, [True] * 15 + [False] * 25)
    out = summarize({"base_noreflect": base, "base_reflect": base, "one_stage": trained, "sft_qa": sft})
    o = out["one_stage"]["overall"]
    assert o["mcnemar_t1_t2"] == {"n": 40, "b": 12, "c": 0, "p": mcnemar_exact(12, 0)}
    assert o["vs_base_reflect"]["b"] == 12 and o["vs_base_reflect"]["p"] < 0.001
    assert o["vs_base_noreflect"] == o["vs_base_reflect"]
    assert o["delta_ci"][0] > 0
    assert out["one_stage"]["per_task"]["t"]["vs_base_reflect"]["p"] == o["vs_base_reflect"]["p"]
    b = out["base_reflect"]["overall"]
    assert b["mcnemar_t1_t2"]["p"] == 1.0 and "vs_base_reflect" not in b
    s = out["sft_qa"]["overall"]
    assert s["vs_base_t1"] == {"n": 40, "b": 15, "c": 10, "p": mcnemar_exact(15, 10)} and "mcnemar_t1_t2" not in s
    assert math.isclose(o["delta"], 0.3)
