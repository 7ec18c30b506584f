"""What a generate run reports (metrics/generate.json): counts per task, run diagnostics and the run's cost."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from reflectevo.generation.episodes import Stats


class Summary:
    """`summarize` one episode at a time (`add`), for the stage that streams its episodes."""

    def __init__(self) -> None:
        from reflectevo.diagnostics import EpisodeDiagnostics

        self.per_task: dict[str, dict[str, Any]] = {}
        self.diagnostics = EpisodeDiagnostics()

    def add(self, ep: dict) -> None:
        pt = self.per_task.setdefault(ep["task"], {"items": 0, "trial1_correct": 0, "reflections": 0, "trial2_correct": 0})
        pt["items"] += 1
        pt["trial1_correct"] += int(ep["trial1"]["correct"])
        pt["reflections"] += len(ep["samples"])
        pt["trial2_correct"] += sum(int(s["trial2"]["correct"]) for s in ep["samples"])
        self.diagnostics.add(ep)

    def result(self, stats: Stats) -> dict[str, Any]:
        per_task = self.per_task
        total = {k: sum(pt[k] for pt in per_task.values()) for k in ("items", "trial1_correct", "reflections", "trial2_correct")}
        return {**total, "per_task": per_task, "diagnostics": self.diagnostics.result(), "run": stats.to_dict()}


def summarize(episodes: Iterable[dict], stats: Stats) -> dict[str, Any]:
    """Counts over all episodes (reused or new) plus the cost of what this run computed."""
    acc = Summary()
    for ep in episodes:
        acc.add(ep)
    return acc.result(stats)
