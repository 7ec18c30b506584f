"""Prepared sources files (data/sources/*.jsonl, unified item schema): read, counted and checked line by line,
streamed, with each item's task built with the options it was prepared with."""

from __future__ import annotations

from pathlib import Path

from reflectevo.errors import ReflectEvoError
from reflectevo.jsonio import iter_jsonl, iter_jsonl_lines
from reflectevo.tasks.base import Item
from reflectevo.tasks.registry import get_task


def iter_items(path: Path, tasks: dict | None = None):
    """The items of a prepared sources file, one at a time (a 460K-item file is never held in memory);
    `tasks` (task name -> Task) is filled as new tasks appear."""
    if not path.exists():
        raise ReflectEvoError(f"{path}: sources not found (run the prepare stage: `dvc repro prepare`)")
    tasks = {} if tasks is None else tasks
    for row in iter_jsonl(path):
        for key in ("id", "task", "question", "answer"):
            if key not in row:
                raise ReflectEvoError(f"{path}: item {row.get('id', '?')} has no {key!r} field")
        it = Item.from_dict(row)
        if it.task not in tasks:
            tasks[it.task] = get_task(it.task, (row.get("meta") or {}).get("task_options"))
        yield it


def count_items(path: Path, limit: int = 0) -> int:
    """How many items a sources file holds (up to `limit` when > 0), checked line by line (valid JSON with
    the required fields) before anything is generated, one line at a time."""
    if not path.exists():
        raise ReflectEvoError(f"{path}: sources not found (run the prepare stage: `dvc repro prepare`)")
    n = 0
    for line, row in iter_jsonl_lines(path):
        for key in ("id", "task", "question", "answer"):
            if key not in row:
                raise ReflectEvoError(f"{path}:{line}: item {row.get('id', '?')} has no {key!r} field")
        n += 1
        if limit and n >= limit:
            break
    return n


def load_items(path: Path, split: str | None = None):
    """Items of a prepared sources file, plus their Task objects."""
    tasks: dict = {}
    items = list(iter_items(path, tasks))
    return items, tasks
