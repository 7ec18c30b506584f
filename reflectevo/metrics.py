"""Turn-level metrics: Acc@t1, Acc@t2, Δ(t1,t2), Δi→c, Δc→i (SCoRe's definitions), per task and overall."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any


def turn_metrics(pairs: Iterable[tuple[bool, bool]]) -> dict[str, Any]:
    """`pairs` = (correct at t1, correct at t2) per item. Fractions of n; rounded to 4 places."""
    pairs = list(pairs)
    n = len(pairs)
    if n == 0:
        return {"n": 0, "acc_t1": None, "acc_t2": None, "delta": None, "delta_i2c": None, "delta_c2i": None}
    t1 = sum(a for a, _ in pairs)
    t2 = sum(b for _, b in pairs)
    i2c = sum((not a) and b for a, b in pairs)
    c2i = sum(a and (not b) for a, b in pairs)
    r = lambda x: round(x / n, 4)  # noqa: E731
    return {"n": n, "acc_t1": r(t1), "acc_t2": r(t2), "delta": round(r(t2) - r(t1), 4), "delta_i2c": r(i2c),
            "delta_c2i": r(c2i)}


def by_task(rows: Iterable[dict[str, Any]], t1_key: str = "t1_correct", t2_key: str = "t2_correct") -> dict[str, Any]:
    """Overall and per-task metrics from per-item rows carrying `task` and two correctness flags."""
    groups: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    everything = []
    for row in rows:
        pair = (bool(row[t1_key]), bool(row[t2_key]))
        groups[row["task"]].append(pair)
        everything.append(pair)
    return {"overall": turn_metrics(everything), "per_task": {t: turn_metrics(p) for t, p in sorted(groups.items())}}
