"""Turn-level metrics: Acc@t1, Acc@t2, Δ(t1,t2), Δi→c, Δc→i (SCoRe's definitions), per task and overall."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """Wilson score interval for k successes in n trials (z=1.96: 95%), rounded to 4 places; None if n=0.

    Unlike the normal approximation it stays inside [0, 1] and is sensible at k=0 or k=n, which matters
    for the small per-task counts of a 500-item test set split by task.
    """
    if n <= 0:
        return None
    if not 0 <= k <= n:
        raise ValueError(f"k={k} must lie in [0, n={n}]")
    p = k / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)


def turn_metrics(pairs: Iterable[tuple[bool, bool]], intervals: bool = False) -> dict[str, Any]:
    """`pairs` = (correct at t1, correct at t2) per item. Fractions of n; rounded to 4 places.

    With `intervals`, also `acc_t1_ci` and `acc_t2_ci`: 95% Wilson intervals as [low, high] (None if n=0).
    """
    pairs = list(pairs)
    n = len(pairs)
    if n == 0:
        out: dict[str, Any] = {"n": 0, "acc_t1": None, "acc_t2": None, "delta": None, "delta_i2c": None,
                               "delta_c2i": None}
        if intervals:
            out.update(acc_t1_ci=None, acc_t2_ci=None)
        return out
    t1 = sum(a for a, _ in pairs)
    t2 = sum(b for _, b in pairs)
    i2c = sum((not a) and b for a, b in pairs)
    c2i = sum(a and (not b) for a, b in pairs)
    r = lambda x: round(x / n, 4)  # noqa: E731
    out = {"n": n, "acc_t1": r(t1), "acc_t2": r(t2), "delta": round(r(t2) - r(t1), 4), "delta_i2c": r(i2c),
           "delta_c2i": r(c2i)}
    if intervals:
        out["acc_t1_ci"] = list(wilson_interval(t1, n))  # type: ignore[arg-type]
        out["acc_t2_ci"] = list(wilson_interval(t2, n))  # type: ignore[arg-type]
    return out


def by_task(rows: Iterable[dict[str, Any]], t1_key: str = "t1_correct", t2_key: str = "t2_correct",
            intervals: bool = False) -> dict[str, Any]:
    """Overall and per-task metrics from per-item rows carrying `task` and two correctness flags
    (`intervals`: add 95% Wilson intervals, see turn_metrics)."""
    groups: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    everything = []
    for row in rows:
        pair = (bool(row[t1_key]), bool(row[t2_key]))
        groups[row["task"]].append(pair)
        everything.append(pair)
    return {"overall": turn_metrics(everything, intervals),
            "per_task": {t: turn_metrics(p, intervals) for t, p in sorted(groups.items())}}
