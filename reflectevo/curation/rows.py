"""Curate raw episodes into training sets.

- D+  : trial 1 wrong, trial 2 right after reflection r -> one row per successful reflection.
- D±  : for one failed trial 1, a reflection whose retry was right (chosen) vs one whose retry was
        wrong (rejected); all combinations, capped per item.
- Dpref: pairs of reflections whose retries were both right, ranked by a judge (optional).
Reflections are filtered first (empty, too short or long, stating the answer, near-duplicate of an
earlier one of the same item by TF-IDF cosine); items, never rows, are split into train and eval, so
no item is on both sides.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from reflectevo.config.sections import CurateConfig
from reflectevo.episodes.record import attempt

_STATES_ANSWER = re.compile(r"Finish\s*(\[|<<<)")


def is_eval_item(item_id: str, fraction: float, seed: int) -> bool:
    """Deterministic item-level split: the same item always lands on the same side."""
    if fraction <= 0:
        return False
    h = int(hashlib.sha256(f"{seed}:{item_id}".encode()).hexdigest()[:8], 16)
    return h / 0xFFFFFFFF < fraction


def reflection_problem(text: str, cfg: CurateConfig) -> str | None:
    """Name of the filter that rejects this reflection, or None when it is kept."""
    words = len(text.split())
    if not text.strip():
        return "empty"
    if words < cfg.min_reflection_words:
        return "too_short"
    if words > cfg.max_reflection_words:
        return "too_long"
    if _STATES_ANSWER.search(text):
        return "states_answer"
    return None


_TOKEN = re.compile(r"(?u)\b\w\w+\b")   # scikit-learn's default token_pattern


def tfidf_cosines(texts: Sequence[str]) -> list[list[float]]:
    """Pairwise cosine similarities of the texts' TF-IDF vectors, as scikit-learn's `TfidfVectorizer()`
    (lowercase, its token pattern, smooth idf = ln((1 + n) / (1 + df)) + 1, l2 norm) computes them, in
    plain Python: a few short texts per item, where scikit-learn's per-call overhead is ~50x the work."""
    import math

    counts = [Counter(_TOKEN.findall(t.lower())) for t in texts]
    n = len(texts)
    df: Counter[str] = Counter()
    for c in counts:
        df.update(c.keys())
    idf2 = {tok: (math.log((1 + n) / (1 + d)) + 1.0) ** 2 for tok, d in df.items()}   # squared idf
    norms = [math.sqrt(sum(k * k * idf2[tok] for tok, k in c.items())) for c in counts]
    sims = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i, n):
            if norms[i] and norms[j]:
                a, b = counts[i], counts[j]
                dot = sum(a[tok] * b[tok] * idf2[tok] for tok in a.keys() & b.keys())
                sims[i][j] = sims[j][i] = round(dot / (norms[i] * norms[j]), 12)
    return sims


def near_duplicates(texts: Sequence[str], threshold: float) -> set[int]:
    """Indices of texts whose TF-IDF cosine to an earlier kept text is >= threshold."""
    if len(texts) < 2:
        return set()
    sims = tfidf_cosines(texts)
    dup: set[int] = set()
    for j in range(1, len(texts)):
        if any(sims[i][j] >= threshold for i in range(j) if i not in dup):
            dup.add(j)
    return dup


def _common(ep: dict) -> dict[str, Any]:
    it = ep["item"]
    return {"item_id": ep["item_id"], "task": ep["task"], "question": it["question"], "choices": it.get("choices"),
            # the options the item was prepared with (multiple choice ...): training builds its prompts with them
            "task_options": (it.get("meta") or {}).get("task_options"),
            "answer": it["answer"], "trial1_prompt": ep["trial1"]["prompt"], "trial1": attempt(ep["trial1"]),
            "trial1_answer": ep["trial1"]["extracted"], "model": ep["model"]["preset"],
            # how the retry prompt was built (a corrector trains on the same prompt it is evaluated with)
            "retry_previous": bool((ep["gen"] or {}).get("use_previous_trial", True)),   # gen: null when imported
            "retry_rejected": ep["trial1"]["extracted"] if (ep["gen"] or {}).get("name_rejected") else None,
            "prompt_version": ep["prompt_version"], "episode_id": ep["episode_id"]}


def _side(s: dict) -> dict[str, Any]:
    return {"sample_id": s["sample_id"], "demand_id": s["demand_id"], "reflection_prompt": s["reflection"]["prompt"],
            "reflection": s["reflection"]["text"], "trial2_prompt": s["trial2"]["prompt"],
            "trial2": attempt(s["trial2"]), "trial2_answer": s["trial2"]["extracted"],
            "trial2_correct": s["trial2"]["correct"]}


def curate(episodes: Sequence[dict], cfg: CurateConfig, judge=None, judge_info: dict | None = None) -> dict[str, Any]:
    """Return {'dplus'|'dpm'|'dpref': {'train': rows, 'eval': rows}, 'drops': Counter, 'stats': {...}}.

    `judge(comparisons) -> [{'winner': 0|1|None, 'votes': [...]}]` ranks pairs of fixing reflections
    (see reflectevo.judge); without it Dpref stays empty. Holds every row in memory: the stage streams
    with `curate_stream`.
    """
    out: dict[str, dict[str, list]] = {k: {"train": [], "eval": []} for k in ("dplus", "dpm", "dpref")}
    res = curate_stream(episodes, cfg, lambda kind, split, row: out[kind][split].append(row), judge, judge_info)
    return {**out, **res}


def curate_stream(episodes: Iterable[dict], cfg: CurateConfig, emit, judge=None, judge_info: dict | None = None,
                  judge_batch: int = 512) -> dict[str, Any]:
    """Curate one episode at a time: `emit(kind, split, row)` gets each D+ / D± row as its episode is
    read and each Dpref row once its batch of `judge_batch` comparisons is judged (in episode order);
    returns {'drops': Counter, 'stats': ...}. An episode is one item, so the item-level filters, dedup
    and split need nothing from other episodes: memory is one episode plus one judge batch."""
    drops: Counter[str] = Counter()
    stats = Statistics()
    pending: list[tuple[str, dict, dict, dict, Any]] = []  # (split, common, a, b, comparison)

    def judge_pending() -> None:
        verdicts = judge([c for *_, c in pending])
        for (split, common, a, b, _), v in zip(pending, verdicts):
            if v["winner"] is None:
                drops["judge_inconsistent"] += 1
                continue
            chosen, rejected = (a, b) if v["winner"] == 0 else (b, a)
            emit("dpref", split, {"id": f"{chosen['sample_id']}>{rejected['sample_id']}", **common,
                                  "chosen": _side(chosen), "rejected": _side(rejected),
                                  "judge": {**(judge_info or {}), "votes": v["votes"]}})
        pending.clear()

    for ep in episodes:
        stats.add(ep)
        if ep["trial1"]["correct"]:
            continue
        kept = []
        for s in ep["samples"]:
            if s.get("reflection") is None:  # generated with `reflect: false` (the w/o-reflection baseline)
                drops["no_reflection"] += 1
                continue
            why = reflection_problem(s["reflection"]["text"], cfg)
            if why:
                drops[why] += 1
            else:
                kept.append(s)
        for j in sorted(near_duplicates([s["reflection"]["text"] for s in kept], cfg.dedup_threshold), reverse=True):
            drops["near_duplicate"] += 1
            del kept[j]
        split = "eval" if is_eval_item(ep["item_id"], cfg.eval_fraction, cfg.seed) else "train"
        common = _common(ep)
        good = [s for s in kept if s["trial2"]["correct"]]
        bad = [s for s in kept if not s["trial2"]["correct"]]
        for s in good:
            emit("dplus", split, {"id": s["sample_id"], **common, **_side(s)})
        pairs = list(itertools.product(good, bad))[: cfg.max_pairs_per_item]
        for c, r in pairs:
            emit("dpm", split, {"id": f"{c['sample_id']}+{r['sample_id']}", **common,
                                "chosen": _side(c), "rejected": _side(r)})
        if judge is not None:
            from reflectevo.judge import Comparison

            for a, b in list(itertools.combinations(good, 2))[: cfg.max_pairs_per_item]:
                pending.append((split, common, a, b, Comparison(
                    ep["item"]["question"], attempt(ep["trial1"]), a["reflection"]["text"], b["reflection"]["text"],
                    first_retry=_retry(a), second_retry=_retry(b))))
            if len(pending) >= judge_batch:
                judge_pending()
    if pending:
        judge_pending()
    return {"drops": drops, "stats": stats.result()}


def _retry(s: dict) -> tuple[str, str] | None:
    """(retry prompt, completion) for the likelihood judge; None for imported episodes without prompts."""
    t2 = s["trial2"]
    return None if t2["prompt"] is None else (t2["prompt"], t2["completion"])


class _TaskRow:
    """The counters of one row of `statistics` (sums and counts, so episodes can stream)."""

    def __init__(self) -> None:
        self.items = self.trial1_correct = self.samples = self.qa = self.t2_correct = 0
        self.sums = {k: [0, 0] for k in ("question", "trial1", "trial2", "reflection")}   # word sum, count

    def add(self, ep: dict) -> None:
        self.items += 1
        self.trial1_correct += int(bool(ep["trial1"]["correct"]))
        samples = ep["samples"]
        self.samples += len(samples)
        self.qa += int(bool(samples))
        self.t2_correct += sum(bool(s["trial2"]["correct"]) for s in samples)
        self._len("question", ep["item"]["question"])
        self._len("trial1", ep["trial1"]["completion"])
        for s in samples:
            self._len("trial2", s["trial2"]["completion"])
            if s.get("reflection"):
                self._len("reflection", s["reflection"]["text"])

    def _len(self, key: str, text: str) -> None:
        acc = self.sums[key]
        acc[0] += len(text.split())
        acc[1] += 1

    def merge(self, other: _TaskRow) -> None:
        for k in ("items", "trial1_correct", "samples", "qa", "t2_correct"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        for k, (a, b) in other.sums.items():
            self.sums[k][0] += a
            self.sums[k][1] += b

    def result(self) -> dict[str, Any]:
        def avg(k: str) -> float | None:
            total, n = self.sums[k]
            return round(total / n, 1) if n else None

        return {
            "items": self.items,
            "trial1_correct": self.trial1_correct,
            "reflection_samples": self.samples,
            "qa_reflection_samples": self.qa,
            "pct_correct_after_reflection": round(100 * self.t2_correct / self.samples, 2) if self.samples else None,
            "avg_question_words": avg("question"),
            "avg_trial1_words": avg("trial1"),
            "avg_trial2_words": avg("trial2"),
            "avg_reflection_words": avg("reflection"),
        }


class Statistics:
    """`statistics` one episode at a time (`add`)."""

    def __init__(self) -> None:
        self.by_task: dict[str, _TaskRow] = {}

    def add(self, ep: dict) -> None:
        self.by_task.setdefault(ep["task"], _TaskRow()).add(ep)

    def result(self) -> dict[str, Any]:
        total = _TaskRow()
        for row in self.by_task.values():
            total.merge(row)
        return {"per_task": {t: r.result() for t, r in sorted(self.by_task.items())}, "total": total.result()}


def statistics(episodes: Iterable[dict]) -> dict[str, Any]:
    """Per-task table in the shape of ReflectEvo-460K's (lengths in words; counters defined below).

    reflection_samples: reflections generated; qa_reflection_samples: failed trial-1 items that got at
    least one reflection; pct_correct_after_reflection: reflections whose trial 2 was right / all.
    """
    acc = Statistics()
    for ep in episodes:
        acc.add(ep)
    return acc.result()
