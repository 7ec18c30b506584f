"""Training examples per setting and role (prompt/completion or prompt/chosen/rejected, in the prompts
evaluation uses), the row checks of the training files, and the data hash."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from reflectevo.prompts import (
    answer_target,
    one_stage_messages,
    one_stage_target,
    reflection_messages,
    trial_messages,
)
from reflectevo.settings import setting as setting_of
from reflectevo.tasks import Item
from reflectevo.tasks.registry import TaskCache


def row_item(row: dict[str, Any]) -> Item:
    """The item of a curated row, with the task options it was prepared with (`task_options`: the prompts
    training builds must be the ones generate and evaluate build, e.g. with the multiple-choice options)."""
    return Item(id=row["item_id"], task=row["task"], question=row["question"], answer=row["answer"],
                choices=tuple(row["choices"]) if row.get("choices") else None,
                meta={"task_options": row["task_options"]} if row.get("task_options") else {})


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def examples(setting: str, rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Training examples per adapter role for a setting (rows: D+, D±/Dpref, source items, or `rl_rows`),
    by what the settings registry says it is: its family, its data and how evaluation runs it."""
    tasks = TaskCache()
    s = setting_of(setting)
    if s.family == "rl":  # rows: `rl_rows` (an item and its trial-1 attempt); prompts only, TRL samples
        out = []
        for r in rows:
            item, oracle = Item.from_dict(r["item"]), r.get("protocol", "oracle") == "oracle"
            prompt = (reflection_messages(item, r["trial1"], None, oracle=oracle) if s.evaluate == "reflect_retry"
                      else one_stage_messages(tasks.of(item), item, r["trial1"], oracle=oracle))
            out.append({"prompt": prompt, "item": json.dumps(item.to_dict(), sort_keys=True), "trial1": r["trial1"],
                        "rejected": r.get("rejected") or "", "oracle": oracle})
        return {s.roles[0]: out}
    if s.data == "sources":  # the answers-only baseline: unified-schema items
        out = []
        for r in rows:
            item = Item.from_dict(r)
            task = tasks.of(item)
            out.append({"prompt": trial_messages(task, item), "completion": _assistant(answer_target(task, item))})
        return {s.roles[0]: out}
    if s.family == "dpo":
        return {s.roles[0]: [{"prompt": reflection_messages(row_item(r), r["trial1"], None),
                              "chosen": _assistant(r["chosen"]["reflection"].strip()),
                              "rejected": _assistant(r["rejected"]["reflection"].strip())} for r in rows]}
    if s.evaluate == "one_stage":
        return {s.roles[0]: [{"prompt": one_stage_messages(tasks.of(row_item(r)), row_item(r), r["trial1"]),
                              "completion": _assistant(one_stage_target(r["reflection"], r["trial2"]))}
                             for r in rows]}
    reflector, corrector = s.roles   # reflect_retry on D+: a reflector and a corrector
    return {
        reflector: [{"prompt": reflection_messages(row_item(r), r["trial1"], None),
                     "completion": _assistant(r["reflection"].strip())} for r in rows],
        corrector: [{"prompt": trial_messages(tasks.of(row_item(r)), row_item(r), reflection=r["reflection"],
                                              previous=r["trial1"] if r.get("retry_previous", True) else None,
                                              retry=True, rejected=r.get("retry_rejected")),
                     "completion": _assistant(r["trial2"].strip())} for r in rows],
    }


_ROW_FIELDS = {"sft": ("item_id", "task", "question", "answer", "trial1", "reflection", "trial2"),
               "dpo": ("item_id", "task", "question", "answer", "trial1", "chosen", "rejected"),
               "sources": ("id", "task", "question", "answer")}


def _typed(row: dict[str, Any], key: str, types: tuple[type, ...], what: str) -> str | None:
    v = row.get(key)
    if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
        return f"{key}: expected {what}, got {type(v).__name__}"
    return None


def row_problem(setting: str, row: dict[str, Any]) -> str | None:
    """What makes `row` unusable as a training row of `setting` (D+, D±/Dpref or a source item), or None:
    a missing field, a field of the wrong type, or (for the settings whose prompts need it) a task that
    cannot be built."""
    s = setting_of(setting)
    kind = "sources" if s.data == "sources" else s.family
    for key in _ROW_FIELDS[kind]:
        if key not in row:
            return f"missing field {key!r}"
    if kind == "sources":
        return Item.problem(row)
    checks = [("item_id", (str, int), "a string"), ("task", (str,), "a string"), ("question", (str,), "a string"),
              ("answer", (str,), "a string"), ("trial1", (str,), "a string"),
              ("choices", (list, type(None)), "a list of strings or null"),
              ("task_options", (dict, type(None)), "an object or null")]
    if kind == "sft":
        checks += [("reflection", (str,), "a string"), ("trial2", (str,), "a string"),
                   ("retry_previous", (bool, type(None)), "true or false"), ("retry_rejected", (str, type(None)), "a string or null")]
    for key, types, what in checks:
        problem = _typed(row, key, types, what)
        if problem:
            return problem
    if row.get("choices") and not all(isinstance(c, str) for c in row["choices"]):
        return "choices: expected a list of strings"
    if kind == "dpo":
        for side in ("chosen", "rejected"):
            if not isinstance(row[side], dict) or not isinstance(row[side].get("reflection"), str):
                return f"{side}.reflection: expected a string"
    return None


def row_task_problem(setting: str, row: dict[str, Any], tasks: TaskCache) -> str | None:
    """For the settings whose training prompts are built with the item's task (one_stage, the corrector,
    the answers-only baseline), why the row's task cannot be built (an unknown name, unusable options)."""
    from reflectevo.errors import ReflectEvoError

    s = setting_of(setting)
    if not (s.data == "sources" or s.evaluate == "one_stage" or (s.family == "sft" and len(s.roles) > 1)):
        return None
    try:
        tasks.of(Item.from_dict(row) if s.data == "sources" else row_item(row))
    except ReflectEvoError as e:
        return str(e)
    except (TypeError, ValueError) as e:   # options the task's constructor refuses
        return f"task {row.get('task')!r}: unusable task options ({e})"
    return None


def data_hash(rows: list[dict[str, Any]]) -> str:
    return hashlib.sha256("\n".join(json.dumps(r, sort_keys=True) for r in rows).encode()).hexdigest()[:16]


def rl_rows(episodes: dict[str, dict[str, Any]], protocol: str, limit: int = 0) -> list[dict[str, Any]]:
    """RL prompts from raw episodes (`generation.load_episodes`): oracle -> the items whose trial 1 failed,
    told so; intrinsic -> every item, no notice. Each row: the item, its trial-1 attempt, the rejected answer."""
    rows = []
    for eid in sorted(episodes):
        ep = episodes[eid]
        t1 = ep["trial1"]
        if protocol == "oracle" and t1.get("correct"):
            continue
        rows.append({"item": ep["item"], "trial1": t1["attempt"] if "attempt" in t1 else t1["completion"], "rejected": t1.get("extracted"),
                     "protocol": protocol, "episode_id": eid})
    return rows[:limit] if limit else rows