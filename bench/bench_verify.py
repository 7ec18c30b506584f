"""Verifier throughput: MBPP sandbox checks/s and MATH equivalence answers/s.

    .venv/bin/python bench/bench_verify.py [--workers 2]

MBPP: the 500 reference solutions of ReflectEvo's test set, judged by `MBPPTask.verify_many`
(parallel sandboxes, one per worker), against two one-at-a-time baselines in the same run:
our sandbox with one worker, and the original's scheme (a forked `multiprocessing.Process` per item
that `exec`s code and asserts, joined with a 5 s cap; no isolation, trusted reference code only).
MATH: `math_equal` on the 500 gold answers (all equal) and on the golds shifted by one item (mostly
unequal), caches cleared first. Writes bench/results/verify.json. Targets: >= 25 checks/s on 2 cores,
>= 500 math answers/s.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import sys
import time
from pathlib import Path

import typer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _original_style_child(code: str, setup: str, tests: list[str]) -> None:
    ns: dict = {}
    exec(code, ns)  # noqa: S102 (benchmark baseline on trusted reference code, in a forked child)
    if setup:
        exec(setup, ns)  # noqa: S102
    for t in tests:
        exec(t, ns)  # noqa: S102


def original_style(items: list) -> tuple[float, int]:
    ctx = multiprocessing.get_context("fork")
    passed = 0
    t0 = time.perf_counter()
    for it in items:
        p = ctx.Process(target=_original_style_child, args=(it.answer, it.meta.get("test_setup_code", ""), list(it.tests)))
        p.start()
        p.join(5)
        if p.is_alive():
            p.kill()
            p.join()
        passed += p.exitcode == 0
    return time.perf_counter() - t0, passed


def main(workers: int = 2, out: Path = ROOT / "bench/results/verify.json") -> None:
    from reflectevo.tasks import get_task
    from reflectevo.tasks import answers

    mbpp = get_task("mbpp")
    items = mbpp.load("test")
    completions = [mbpp.gold_completion(it) for it in items]
    mbpp.verify_many(completions[:8], items[:8], workers=workers)  # warm the page cache

    t0 = time.perf_counter()
    verdicts = mbpp.verify_many(completions, items, workers=workers)
    par_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    serial = mbpp.verify_many(completions, items, workers=1)
    ser_s = time.perf_counter() - t0
    orig_s, orig_passed = original_style(items)

    math_task = get_task("math")
    golds = [it.answer for it in math_task.load("test")]
    shifted = golds[1:] + golds[:1]
    rates = {}
    for label, preds in (("gold", golds), ("shifted", shifted)):
        answers._mv_parse.cache_clear()
        t0 = time.perf_counter()
        eq = [answers.math_equal(p, g) for p, g in zip(preds, golds)]
        dt = time.perf_counter() - t0
        rates[label] = {"answers": len(preds), "seconds": round(dt, 3), "answers_per_s": round(len(preds) / dt, 1),
                        "judged_equal": sum(eq)}
    answers._mv_parse.cache_clear()
    mixed = golds + shifted
    t0 = time.perf_counter()
    for p, g in zip(mixed, golds + golds):
        answers.math_equal(p, g)
    mixed_rate = len(mixed) / (time.perf_counter() - t0)

    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "mbpp": {
            "items": len(items), "workers": workers,
            "parallel": {"seconds": round(par_s, 2), "checks_per_s": round(len(items) / par_s, 1),
                         "passed": sum(v.correct for v in verdicts)},
            "ours_one_at_a_time": {"seconds": round(ser_s, 2), "checks_per_s": round(len(items) / ser_s, 1),
                                   "passed": sum(v.correct for v in serial)},
            "original_style_one_at_a_time": {"seconds": round(orig_s, 2), "checks_per_s": round(len(items) / orig_s, 1),
                                             "passed": orig_passed, "cap_s": 5},
            "speedup_vs_ours_serial": round(ser_s / par_s, 2),
            "ratio_vs_original_style": round(orig_s / par_s, 2),
            "target_checks_per_s": 25,
        },
        "math": {**rates, "mixed_answers_per_s": round(mixed_rate, 1), "target_answers_per_s": 500},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    typer.run(main)
