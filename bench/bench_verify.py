"""Verifier throughput: MBPP sandbox checks/s and MATH equivalence answers/s.

    .venv/bin/python bench/bench_verify.py [--workers 2] [--repeat 3] [--only all|math|mbpp]

MBPP: the 500 reference solutions of ReflectEvo's test set, judged by `MBPPTask.verify_many`
(parallel sandboxes, one per worker), against two one-at-a-time baselines in the same run:
our sandbox with one worker, and the original's scheme (a forked `multiprocessing.Process` per item
that `exec`s code and asserts, joined with a 5 s cap; no isolation, trusted reference code only).

MATH: `math_equal` on the 500 golds of ReflectEvo's MATH test set in three sets: (a) all correct
(each gold against itself), (b) all wrong (each gold against the next item's gold; the one pair
whose two golds are equal stays in and counts as judged equal), (c) mixed (a + b, 1,000 answers).
Each set of each repeat runs in a fresh Python process (so `math_verify`'s parser starts cold, as
in a `reflectevo verify` run); the one-time import of math_verify/sympy is done and timed before the
clock starts (`import_s`), and the number of pairs that reached math_verify is counted. The median of the repeats is reported, with the load average
(os.getloadavg) before and after each. Writes bench/results/verify.json (with --only math, the
MBPP part of an existing file is kept). Targets: >= 25 checks/s on 2 cores, >= 500 answers/s.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import statistics
import subprocess
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


def _clear_math_caches() -> None:
    from reflectevo.tasks import answers, math_fast

    for fn in (answers._mv_parse, answers.normalize_math, answers._as_number, math_fast.parse_simple,
               math_fast.parse_shape):
        fn.cache_clear()


MATH_SETS = ("all_correct", "all_wrong", "mixed")


def math_once(label: str) -> dict:
    """One MATH set, in this (fresh) process: the parser caches and math_verify's parser start cold."""
    from reflectevo.tasks import answers
    from reflectevo.tasks.registry import get_task

    t0 = time.perf_counter()
    answers.math_verify_equal("x+1", "1+x")  # imports math_verify, sympy, latex2sympy (one-time cost)
    import_s = time.perf_counter() - t0
    golds = [it.answer for it in get_task("math").load("test")]
    shifted = golds[1:] + golds[:1]
    preds, gs = {"all_correct": (golds, golds), "all_wrong": (shifted, golds),
                 "mixed": (golds + shifted, golds + golds)}[label]
    calls = [0]
    real = answers.math_verify_equal

    def counted(pred: str, gold: str) -> bool:
        calls[0] += 1
        return real(pred, gold)

    answers.math_verify_equal = counted  # type: ignore[assignment]
    _clear_math_caches()
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    eq = [answers.math_equal(p, g) for p, g in zip(preds, gs)]
    dt = time.perf_counter() - t0
    answers.math_verify_equal = real  # type: ignore[assignment]
    return {"answers": len(preds), "seconds": round(dt, 4), "answers_per_s": round(len(preds) / dt, 1),
            "judged_equal": sum(eq), "math_verify_calls": calls[0], "import_s": round(import_s, 3),
            "load_1min_before": round(load, 2), "load_1min_after": round(os.getloadavg()[0], 2)}


def bench_math(repeat: int) -> dict:
    runs: dict[str, list[dict]] = {label: [] for label in MATH_SETS}
    for _ in range(repeat):
        for label in MATH_SETS:
            proc = subprocess.run([sys.executable, __file__, "--only", f"math-once:{label}"], capture_output=True,
                                  text=True, check=True, cwd=ROOT)
            runs[label].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    median = {label: statistics.median(r["answers_per_s"] for r in runs[label]) for label in MATH_SETS}
    return {"repeats": repeat, "median_answers_per_s": median, "runs": runs, "target_answers_per_s": 500,
            "method": "math_equal: equal strings / normal forms -> exact Fraction comparison of plain numbers "
                      "-> math_fast.certainly_different -> math_verify (see reflectevo/tasks/answers.py); "
                      "each set of each repeat in a fresh process, import of math_verify excluded (import_s)"}


def bench_mbpp(workers: int) -> dict:
    from reflectevo.tasks.registry import get_task

    mbpp = get_task("mbpp")
    items = mbpp.load("test")
    completions = [mbpp.gold_completion(it) for it in items]
    mbpp.verify_many(completions[:8], items[:8], workers=workers)  # warm the page cache
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    verdicts = mbpp.verify_many(completions, items, workers=workers)
    par_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    serial = mbpp.verify_many(completions, items, workers=1)
    ser_s = time.perf_counter() - t0
    orig_s, orig_passed = original_style(items)
    return {
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
        "load_1min_before": round(load, 2), "load_1min_after": round(os.getloadavg()[0], 2),
    }


def main(workers: int = 2, repeat: int = 3, only: str = "all", out: Path = ROOT / "bench/results/verify.json") -> None:
    if only.startswith("math-once:"):  # internal: one set in a fresh process, JSON on the last line
        print(json.dumps(math_once(only.split(":", 1)[1])))
        return
    if only not in ("all", "math", "mbpp"):
        raise typer.BadParameter("--only must be all, math or mbpp")
    previous = json.loads(out.read_text()) if out.exists() else {}
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load_avg_1_5_15_at_start": [round(x, 2) for x in os.getloadavg()]},
        "mbpp": bench_mbpp(workers) if only in ("all", "mbpp") else previous.get("mbpp"),
        "math": bench_math(repeat) if only in ("all", "math") else previous.get("math"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    typer.run(main)
