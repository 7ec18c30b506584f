"""Paired statistics on the same items: exact McNemar tests and a paired bootstrap interval for Δ.

Two systems judged on the same test items differ only on the discordant items: `b` items the second
gets right and the first wrong, `c` the reverse. Under "no difference" each discordant item goes
either way with probability 1/2, so the exact two-sided McNemar p-value is the binomial tail
2 * P(X <= min(b, c)), X ~ Bin(b + c, 1/2), capped at 1. For Δ = Acc@t2 - Acc@t1 the bootstrap
resamples items (keeping each item's pair together) and reports the 2.5% and 97.5% percentiles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value for b and c discordant items (1.0 when there are none)."""
    if b < 0 or c < 0:
        raise ValueError("discordant counts must be >= 0")
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return float(f"{min(1.0, 2 * tail):.4g}")   # 4 significant digits: a tiny p stays visible (1.49e-08)


def paired_test(first: Sequence[bool], second: Sequence[bool]) -> dict[str, Any]:
    """McNemar of `second` against `first` on the same items, in the same order: `b` = items only
    `second` gets right, `c` = items only `first` gets right, and the exact p-value."""
    if len(first) != len(second):
        raise ValueError(f"paired test on {len(first)} vs {len(second)} items")
    b = sum((not x) and y for x, y in zip(first, second))
    c = sum(x and (not y) for x, y in zip(first, second))
    return {"n": len(first), "b": b, "c": c, "p": mcnemar_exact(b, c)}


def bootstrap_delta_ci(first: Sequence[bool], second: Sequence[bool], n_boot: int = 10_000, seed: int = 0,
                       level: float = 0.95) -> list[float] | None:
    """Paired bootstrap percentile interval of mean(second) - mean(first) (None for no items)."""
    import numpy as np

    n = len(first)
    if n == 0:
        return None
    diff = np.asarray(second, dtype=np.int8) - np.asarray(first, dtype=np.int8)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return [round(float(lo), 4), round(float(hi), 4)]


def aligned(rows_a: Sequence[dict[str, Any]], rows_b: Sequence[dict[str, Any]], key_a: str,
            key_b: str) -> tuple[list[bool], list[bool]]:
    """The correctness flags of two systems on their common items (matched by `item_id`)."""
    b_by_id = {r["item_id"]: bool(r[key_b]) for r in rows_b}
    common = [r for r in rows_a if r["item_id"] in b_by_id]
    return [bool(r[key_a]) for r in common], [b_by_id[r["item_id"]] for r in common]
