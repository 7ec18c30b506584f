"""Run diagnostics: what a user looks at first when a run fixes nothing.

For generated episodes (`episode_diagnostics`) and evaluation predictions (`prediction_diagnostics`):
format failures (no parsable answer) at trial 1 and trial 2, the stop-reason histogram per phase, the
**repeat rate** (the retry gives the rejected answer again), the **fix rate** (trial 1 wrong -> trial 2
right), and tokens per phase (prompt tokens included: on a CPU a prompt token costs about what a
generated one does). Per task, per demand id (episodes) and per system (predictions).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

PHASES = ("trial1", "reflection", "trial2")


def _norm(answer: str | None) -> str | None:
    return None if answer is None else " ".join(str(answer).lower().split()).strip(" .")


def _rate(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


class _Acc:
    """Counters of one group (a task, a demand id, or everything)."""

    def __init__(self) -> None:
        self.c: Counter[str] = Counter()
        self.stops: dict[str, Counter[str]] = {p: Counter() for p in PHASES}
        self.tokens: dict[str, list[int]] = {p: [0, 0, 0] for p in PHASES}   # calls, prompt, new

    def phase(self, phase: str, rec: dict[str, Any] | None) -> None:
        if rec is None:
            return
        self.stops[phase][str(rec.get("stop_reason", "unknown"))] += 1
        if rec.get("forced_answer"):
            self.c[f"{phase}_forced"] += 1
        t = self.tokens[phase]
        t[0] += 1
        t[1] += int(rec.get("n_prompt_tokens") or 0)
        t[2] += int(rec.get("n_new_tokens") or 0)

    def result(self) -> dict[str, Any]:
        c = self.c
        out: dict[str, Any] = {
            "items": c["items"], "trial1_correct": c["t1_correct"],
            "trial1_format_failures": c["t1_format"], "samples": c["samples"], "fixes": c["fixes"],
            "trial2_format_failures": c["t2_format"], "repeats": c["repeats"],
            "answer_steps": {"trial1": c["trial1_forced"], "trial2": c["trial2_forced"]},
            "fix_rate": _rate(c["fixes"], c["t1_wrong_samples"]),
            "repeat_rate": _rate(c["repeats"], c["samples"]),
            "trial1_format_failure_rate": _rate(c["t1_format"], c["items"]),
            "trial2_format_failure_rate": _rate(c["t2_format"], c["samples"]),
            "stop_reasons": {p: dict(sorted(v.items())) for p, v in self.stops.items() if v},
            "tokens": {p: {"calls": t[0], "prompt": t[1], "new": t[2],
                           "mean_prompt": round(t[1] / t[0], 1) if t[0] else None,
                           "mean_new": round(t[2] / t[0], 1) if t[0] else None}
                       for p, t in self.tokens.items() if t[0]},
        }
        return out


def episode_diagnostics(episodes: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Diagnostics of generated episodes: overall, per task, per demand id (round 1 of each sample)."""
    acc = EpisodeDiagnostics()
    for ep in episodes:
        acc.add(ep)
    return acc.result()


class EpisodeDiagnostics:
    """`episode_diagnostics` one episode at a time (`add`), for stages that stream their episodes."""

    def __init__(self) -> None:
        self.total: _Acc = _Acc()
        self.per_task: dict[str, _Acc] = {}
        self.per_demand: dict[str, _Acc] = {}

    def add(self, ep: dict[str, Any]) -> None:
        per_task, per_demand = self.per_task, self.per_demand
        t1 = ep["trial1"]
        groups = [self.total, per_task.setdefault(ep["task"], _Acc())]
        for g in groups:
            g.c["items"] += 1
            g.c["t1_correct"] += int(bool(t1["correct"]))
            g.c["t1_format"] += int(t1.get("extracted") is None)
            g.phase("trial1", t1)
        for s in ep.get("samples", []):
            t2 = s["trial2"]
            d = per_demand.setdefault(str(s.get("demand_id")), _Acc())
            for g in (*groups, d):
                g.c["samples"] += 1
                if not t1["correct"]:
                    g.c["t1_wrong_samples"] += 1
                    g.c["fixes"] += int(bool(t2["correct"]))
                g.c["t2_format"] += int(t2.get("extracted") is None)
                g.c["repeats"] += int(t2.get("extracted") is not None
                                      and _norm(t2.get("extracted")) == _norm(t1.get("extracted")))
                g.phase("reflection", s.get("reflection"))
                g.phase("trial2", t2)

    def result(self) -> dict[str, Any]:
        return {"overall": self.total.result(), "per_task": {k: v.result() for k, v in sorted(self.per_task.items())},
                "per_demand": {k: _brief(v.result()) for k, v in sorted(self.per_demand.items())}}


def _brief(d: dict[str, Any]) -> dict[str, Any]:
    return {k: d[k] for k in ("samples", "fixes", "fix_rate", "repeats", "repeat_rate", "trial2_format_failures")}


def prediction_diagnostics(system_rows: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per system (overall and per task) for round 1 of the evaluation predictions: format failures,
    repeat rate and fix rate of the rows that retried, stop reasons and new tokens per phase."""
    out: dict[str, Any] = {}
    for system, rows in system_rows.items():
        total, per_task = _Acc(), {}
        for r in rows:
            for g in (total, per_task.setdefault(r["task"], _Acc())):
                g.c["items"] += 1
                g.c["t1_correct"] += int(bool(r.get("t1_correct")))
                g.c["t1_format"] += int("t1_answer" in r and r.get("t1_answer") is None)
                if "t1_stop" in r:
                    g.phase("trial1", {"stop_reason": r["t1_stop"], "n_new_tokens": r.get("t1_new_tokens"),
                                       "forced_answer": r.get("t1_forced")})
                if "t2" not in r:      # did not retry (right under the oracle protocol, or sft_qa)
                    continue
                g.c["samples"] += 1
                if not r.get("t1_correct"):
                    g.c["t1_wrong_samples"] += 1
                    g.c["fixes"] += int(bool(r.get("t2_correct")))
                g.c["t2_format"] += int(r.get("t2_answer") is None)
                g.c["repeats"] += int(r.get("t2_answer") is not None and _norm(r.get("t2_answer")) == _norm(r.get("t1_answer")))
                if "reflection_stop" in r:
                    g.phase("reflection", {"stop_reason": r["reflection_stop"], "n_new_tokens": r.get("reflection_new_tokens")})
                if "t2_stop" in r:
                    g.phase("trial2", {"stop_reason": r["t2_stop"], "n_new_tokens": r.get("t2_new_tokens"),
                                       "forced_answer": r.get("t2_forced")})
        out[system] = {"overall": _short(total.result()), "per_task": {k: _short(v.result()) for k, v in sorted(per_task.items())}}
    return out


def _short(d: dict[str, Any]) -> dict[str, Any]:
    keep = ("items", "trial1_format_failures", "samples", "fixes", "fix_rate", "repeats", "repeat_rate",
            "trial2_format_failures", "answer_steps", "stop_reasons", "tokens")
    return {k: d[k] for k in keep if k in d}
