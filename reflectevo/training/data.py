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
from reflectevo.tasks import Item, get_task

SETTINGS = ("one_stage", "two_stage", "dpo_pm", "dpo_pref", "sft_qa")
ADAPTERS = {"one_stage": ("one_stage",), "two_stage": ("reflector", "corrector"), "dpo_pm": ("reflector",),
            "dpo_pref": ("reflector",), "sft_qa": ("answerer",)}


def row_item(row: dict[str, Any]) -> Item:
    return Item(id=row["item_id"], task=row["task"], question=row["question"], answer=row["answer"],
                choices=tuple(row["choices"]) if row.get("choices") else None)


class _Tasks(dict):
    def __missing__(self, name: str):
        self[name] = get_task(name)
        return self[name]


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def examples(setting: str, rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Training examples per adapter role for a setting (rows: D+, D±/Dpref, or source items)."""
    tasks = _Tasks()
    if setting == "one_stage":
        return {"one_stage": [{"prompt": one_stage_messages(tasks[r["task"]], row_item(r), r["trial1"]),
                               "completion": _assistant(one_stage_target(r["reflection"], r["trial2"]))}
                              for r in rows]}
    if setting == "two_stage":
        return {
            "reflector": [{"prompt": reflection_messages(row_item(r), r["trial1"], None),
                           "completion": _assistant(r["reflection"].strip())} for r in rows],
            "corrector": [{"prompt": trial_messages(tasks[r["task"]], row_item(r), reflection=r["reflection"],
                                                    previous=r["trial1"] if r.get("retry_previous", True) else None,
                                                    retry=True, rejected=r.get("retry_rejected")),
                           "completion": _assistant(r["trial2"].strip())} for r in rows],
        }
    if setting in ("dpo_pm", "dpo_pref"):
        return {"reflector": [{"prompt": reflection_messages(row_item(r), r["trial1"], None),
                               "chosen": _assistant(r["chosen"]["reflection"].strip()),
                               "rejected": _assistant(r["rejected"]["reflection"].strip())} for r in rows]}
    if setting == "sft_qa":
        out = []
        for r in rows:  # unified-schema items
            item = Item.from_dict(r)
            task = tasks[item.task]
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
