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
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from reflectevo.config import CurateConfig

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


def near_duplicates(texts: Sequence[str], threshold: float) -> set[int]:
    """Indices of texts whose TF-IDF cosine to an earlier kept text is >= threshold."""
    if len(texts) < 2:
        return set()
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.metrics.pairwise import cosine_similarity

    try:
        sims = cosine_similarity(TfidfVectorizer().fit_transform(texts))
    except ValueError:  # empty vocabulary (e.g. only stop-free punctuation)
        return set()
    dup: set[int] = set()
    for j in range(1, len(texts)):
        if any(sims[i, j] >= threshold for i in range(j) if i not in dup):
            dup.add(j)
    return dup


def attempt(trial: dict) -> str:
    """A trial's text as later prompts show it: the assistant-side prefix + completion (`attempt`;
    records written before the prefix existed hold the completion only)."""
    return trial.get("attempt", trial["completion"])


def _common(ep: dict) -> dict[str, Any]:
    it = ep["item"]
    return {"item_id": ep["item_id"], "task": ep["task"], "question": it["question"], "choices": it.get("choices"),
            "answer": it["answer"], "trial1_prompt": ep["trial1"]["prompt"], "trial1": attempt(ep["trial1"]),
            "trial1_answer": ep["trial1"]["extracted"], "model": ep["model"]["preset"],
            # how the retry prompt was built (a corrector trains on the same prompt it is evaluated with)
            "retry_previous": bool(ep["gen"].get("use_previous_trial", True)),
            "retry_rejected": ep["trial1"]["extracted"] if ep["gen"].get("name_rejected") else None,
            "prompt_version": ep["prompt_version"], "episode_id": ep["episode_id"]}


def _side(s: dict) -> dict[str, Any]:
    return {"sample_id": s["sample_id"], "demand_id": s["demand_id"], "reflection_prompt": s["reflection"]["prompt"],
            "reflection": s["reflection"]["text"], "trial2_prompt": s["trial2"]["prompt"],
            "trial2": attempt(s["trial2"]), "trial2_answer": s["trial2"]["extracted"],
            "trial2_correct": s["trial2"]["correct"]}


def curate(episodes: Sequence[dict], cfg: CurateConfig, judge=None, judge_info: dict | None = None) -> dict[str, Any]:
    """Return {'dplus'|'dpm'|'dpref': {'train': rows, 'eval': rows}, 'drops': Counter, 'stats': {...}}.

    `judge(comparisons) -> [{'winner': 0|1|None, 'votes': [...]}]` ranks pairs of fixing reflections
    (see reflectevo.judge); without it Dpref stays empty.
    """
    drops: Counter[str] = Counter()
    out: dict[str, dict[str, list]] = {k: {"train": [], "eval": []} for k in ("dplus", "dpm", "dpref")}
    pending: list[tuple[str, dict, dict, dict, dict]] = []  # (split, common, a, b, episode)
    for ep in episodes:
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
            out["dplus"][split].append({"id": s["sample_id"], **common, **_side(s)})
        pairs = list(itertools.product(good, bad))[: cfg.max_pairs_per_item]
        for c, r in pairs:
            out["dpm"][split].append({"id": f"{c['sample_id']}+{r['sample_id']}", **common,
                                      "chosen": _side(c), "rejected": _side(r)})
        if judge is not None:
            for a, b in list(itertools.combinations(good, 2))[: cfg.max_pairs_per_item]:
                pending.append((split, common, a, b, ep))
    if pending:
        from reflectevo.judge import Comparison

        verdicts = judge([Comparison(ep["item"]["question"], attempt(ep["trial1"]), a["reflection"]["text"],
                                     b["reflection"]["text"],
                                     first_retry=(a["trial2"]["prompt"], a["trial2"]["completion"]),
                                     second_retry=(b["trial2"]["prompt"], b["trial2"]["completion"]))
                          for _, _, a, b, ep in pending])
        for (split, common, a, b, _), v in zip(pending, verdicts):
            if v["winner"] is None:
                drops["judge_inconsistent"] += 1
                continue
            chosen, rejected = (a, b) if v["winner"] == 0 else (b, a)
            out["dpref"][split].append({"id": f"{chosen['sample_id']}>{rejected['sample_id']}", **common,
                                        "chosen": _side(chosen), "rejected": _side(rejected),
                                        "judge": {**(judge_info or {}), "votes": v["votes"]}})
    return {**out, "drops": drops, "stats": statistics(episodes)}


def _avg(xs: Iterable[int]) -> float | None:
    xs = list(xs)
    return round(sum(xs) / len(xs), 1) if xs else None


def statistics(episodes: Sequence[dict]) -> dict[str, Any]:
    """Per-task table in the shape of ReflectEvo-460K's (lengths in words; counters defined below).

    reflection_samples: reflections generated; qa_reflection_samples: failed trial-1 items that got at
    least one reflection; pct_correct_after_reflection: reflections whose trial 2 was right / all.
    """
    by_task: dict[str, list[dict]] = defaultdict(list)
    for ep in episodes:
        by_task[ep["task"]].append(ep)

    def row(eps: list[dict]) -> dict[str, Any]:
        samples = [s for ep in eps for s in ep["samples"]]
        return {
            "items": len(eps),
            "trial1_correct": sum(ep["trial1"]["correct"] for ep in eps),
            "reflection_samples": len(samples),
            "qa_reflection_samples": sum(1 for ep in eps if ep["samples"]),
            "pct_correct_after_reflection": round(100 * sum(s["trial2"]["correct"] for s in samples) / len(samples), 2)
            if samples else None,
            "avg_question_words": _avg(len(ep["item"]["question"].split()) for ep in eps),
            "avg_trial1_words": _avg(len(ep["trial1"]["completion"].split()) for ep in eps),
            "avg_trial2_words": _avg(len(s["trial2"]["completion"].split()) for s in samples),
            "avg_reflection_words": _avg(len(s["reflection"]["text"].split()) for s in samples if s.get("reflection")),
        }

    return {"per_task": {t: row(eps) for t, eps in sorted(by_task.items())}, "total": row(list(episodes))}
