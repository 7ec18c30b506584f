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
from reflectevo.tasks import Item, TaskCache

RL_SETTINGS = ("grpo_one_stage", "grpo_reflect_retry", "rloo")   # online RL on data/raw's trial-1 attempts
SETTINGS = ("one_stage", "two_stage", "dpo_pm", "dpo_pref", "sft_qa", *RL_SETTINGS)
ADAPTERS = {"one_stage": ("one_stage",), "two_stage": ("reflector", "corrector"), "dpo_pm": ("reflector",),
            "dpo_pref": ("reflector",), "sft_qa": ("answerer",),
            "grpo_one_stage": ("one_stage",), "grpo_reflect_retry": ("reflector",), "rloo": ("one_stage",)}


def family(setting: str) -> str:
    """sft | dpo | rl: which trainer a setting uses."""
    return "rl" if setting in RL_SETTINGS else "dpo" if setting.startswith("dpo") else "sft"


def row_item(row: dict[str, Any]) -> Item:
    """The item of a curated row, with the task options it was prepared with (`task_options`: the prompts
    training builds must be the ones generate and evaluate build, e.g. with the multiple-choice options)."""
    return Item(id=row["item_id"], task=row["task"], question=row["question"], answer=row["answer"],
                choices=tuple(row["choices"]) if row.get("choices") else None,
                meta={"task_options": row["task_options"]} if row.get("task_options") else {})


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def examples(setting: str, rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Training examples per adapter role for a setting (rows: D+, D±/Dpref, or source items)."""
    tasks = TaskCache()
    if setting == "one_stage":
        return {"one_stage": [{"prompt": one_stage_messages(tasks.of(row_item(r)), row_item(r), r["trial1"]),
                               "completion": _assistant(one_stage_target(r["reflection"], r["trial2"]))}
                              for r in rows]}
    if setting == "two_stage":
        return {
            "reflector": [{"prompt": reflection_messages(row_item(r), r["trial1"], None),
                           "completion": _assistant(r["reflection"].strip())} for r in rows],
            "corrector": [{"prompt": trial_messages(tasks.of(row_item(r)), row_item(r), reflection=r["reflection"],
                                                    previous=r["trial1"] if r.get("retry_previous", True) else None,
                                                    retry=True, rejected=r.get("retry_rejected")),
                           "completion": _assistant(r["trial2"].strip())} for r in rows],
        }
    if setting in ("dpo_pm", "dpo_pref"):
        return {"reflector": [{"prompt": reflection_messages(row_item(r), r["trial1"], None),
                               "chosen": _assistant(r["chosen"]["reflection"].strip()),
                               "rejected": _assistant(r["rejected"]["reflection"].strip())} for r in rows]}
    if setting in RL_SETTINGS:  # rows: `rl_rows` (an item and its trial-1 attempt); prompts only, TRL samples
        role = ADAPTERS[setting][0]
        out = []
        for r in rows:
            item, oracle = Item.from_dict(r["item"]), r.get("protocol", "oracle") == "oracle"
            prompt = (reflection_messages(item, r["trial1"], None, oracle=oracle) if setting == "grpo_reflect_retry"
                      else one_stage_messages(tasks.of(item), item, r["trial1"], oracle=oracle))
            out.append({"prompt": prompt, "item": json.dumps(item.to_dict(), sort_keys=True), "trial1": r["trial1"],
                        "rejected": r.get("rejected") or "", "oracle": oracle})
        return {role: out}
    if setting == "sft_qa":
        out = []
        for r in rows:  # unified-schema items
            item = Item.from_dict(r)
            task = tasks.of(item)
            out.append({"prompt": trial_messages(task, item), "completion": _assistant(answer_target(task, item))})
        return {"answerer": out}
    raise ValueError(f"unknown setting {setting!r}")


_ROW_FIELDS = {"sft": ("item_id", "task", "question", "answer", "trial1", "reflection", "trial2"),
               "dpo": ("item_id", "task", "question", "answer", "trial1", "chosen", "rejected"),
               "sft_qa": ("id", "task", "question", "answer")}


def row_problem(setting: str, row: dict[str, Any]) -> str | None:
    """What makes `row` unusable as a training row of `setting` (D+, D±/Dpref or a source item), or None."""
    kind = "sft_qa" if setting == "sft_qa" else "dpo" if setting.startswith("dpo") else "sft"
    for key in _ROW_FIELDS[kind]:
        if key not in row:
            return f"missing field {key!r}"
    if kind == "dpo":
        for side in ("chosen", "rejected"):
            if not isinstance(row[side], dict) or not isinstance(row[side].get("reflection"), str):
                return f"{side}.reflection: expected a string"
    if kind == "sft":
        for key in ("trial1", "reflection", "trial2"):
            if not isinstance(row[key], str):
                return f"{key}: expected a string, got {type(row[key]).__name__}"
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
        rows.append({"item": ep["item"], "trial1": t1["attempt"], "rejected": t1.get("extracted"),
                     "protocol": protocol, "episode_id": eid})
    return rows[:limit] if limit else rows