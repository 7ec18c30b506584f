"""ReflectEvo's published numbers and the sources of its training data, read once from
`reflectevo/resources/paper.yaml`: the ReflectEvo-460K statistics table per task domain, Acc@t1 per model
and test set, which of our tasks stands for which of the paper's 17 datasets, and each dataset's licence and
citation. `reflectevo plan` takes its default assumptions from here; the data card prints the statistics
table next to ours. Imports nothing of the project but `errors`, so any module may use it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from importlib import resources
from typing import Any

from reflectevo.errors import ReflectEvoError

STAT_KEYS = ("reflection_samples", "qa_reflection_samples", "pct_correct_after_reflection", "avg_question",
             "avg_trial1", "avg_trial2", "avg_reflection")


@functools.lru_cache(maxsize=1)
def facts() -> dict[str, Any]:
    from ruamel.yaml import YAML

    text = resources.files("reflectevo.resources").joinpath("paper.yaml").read_text(encoding="utf-8")
    data = YAML(typ="safe", pure=True).load(text)
    for name, entry in data["tasks"].items():
        if entry["domain"] not in data["domains"] and entry["domain"] != "bigbench_test":
            raise ReflectEvoError(f"reflectevo/resources/paper.yaml: tasks.{name}.domain: unknown {entry['domain']!r}")
        if entry["dataset"] not in data["datasets"]:
            raise ReflectEvoError(f"reflectevo/resources/paper.yaml: tasks.{name}.dataset: unknown {entry['dataset']!r}")
    return data


def domains() -> dict[str, dict[str, Any]]:
    """Domain key -> the paper's row of the statistics table (label, counts, % correct, lengths)."""
    return facts()["domains"]


def total() -> dict[str, Any]:
    return facts()["total"]


def task_info(task: str) -> dict[str, Any] | None:
    """Domain, Table-2 test set, dataset and role of one of our task names; None for other tasks."""
    return facts()["tasks"].get(task)


def domain_of(task: str) -> str | None:
    info = task_info(task)
    return info["domain"] if info and info["domain"] in domains() else None


def acc_t1(model: str, test_set: str) -> tuple[float, str] | None:
    """(Acc@t1 as a fraction, where it comes from) for a preset name and a Table-2 test set; Gemma-2-9B (not
    published) and any other preset fall back to Llama-3-8B's figure, said in the source."""
    table = facts()["acc_t1"]
    if model in table:
        return table[model][test_set] / 100, f"paper Table 2, {model} Acc@t1 on {test_set}"
    return table["llama3-8b"][test_set] / 100, f"paper Table 2, llama3-8b Acc@t1 on {test_set} ({model}: not published)"


def datasets_of(tasks: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The datasets (name, hub id, licence, citation) behind a list of our task names, in first-seen order."""
    out: dict[str, dict[str, Any]] = {}
    for t in tasks:
        info = task_info(t)
        if info and info["dataset"] not in out:
            out[info["dataset"]] = facts()["datasets"][info["dataset"]]
    return out


def stand_ins() -> dict[str, str]:
    """Our stand-ins for the paper's unidentified small BIG-bench subtasks: task -> domain."""
    return {t: e["domain"] for t, e in facts()["tasks"].items() if e["role"] == "stand-in"}


__all__ = ["STAT_KEYS", "acc_t1", "datasets_of", "domain_of", "domains", "facts", "stand_ins", "task_info", "total"]
