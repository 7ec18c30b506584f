"""Prepared sources files (data/sources/*.jsonl, unified item schema): read, counted and checked line by line,
streamed, with each item's task built with the options it was prepared with."""

from __future__ import annotations

from pathlib import Path

from reflectevo.errors import ReflectEvoError, one_line
from reflectevo.jsonio import iter_jsonl_lines
from reflectevo.tasks.base import Item
from reflectevo.tasks.registry import get_task


def _checked_items(path: Path, tasks: dict, limit: int = 0):
    """(line, row) of a sources file, each row checked (the unified item schema, a known task with usable
    options) before it is yielded; `tasks` (task name -> Task) is filled as new tasks appear."""
    if not path.exists():
        raise ReflectEvoError(f"{path}: sources not found (run the prepare stage: `dvc repro prepare`)")
    for n, (line, row) in enumerate(iter_jsonl_lines(path), start=1):
        problem = Item.problem(row)
        if problem:
            raise ReflectEvoError(f"{path}:{line}: {problem}")
        if row["task"] not in tasks:
            try:
                tasks[row["task"]] = get_task(row["task"], (row.get("meta") or {}).get("task_options"))
            except ReflectEvoError as e:
                raise ReflectEvoError(f"{path}:{line}: {e}") from None
            except (TypeError, ValueError) as e:   # options the task's constructor refuses
                raise ReflectEvoError(f"{path}:{line}: task {row['task']!r}: unusable meta.task_options "
                                      f"({one_line(str(e))})") from None
        yield line, row
        if limit and n >= limit:
            return


def iter_items(path: Path, tasks: dict | None = None):
    """The items of a prepared sources file, one at a time (a 460K-item file is never held in memory);
    `tasks` (task name -> Task) is filled as new tasks appear. Each row is checked first (file:line)."""
    tasks = {} if tasks is None else tasks
    for _, row in _checked_items(path, tasks):
        yield Item.from_dict(row)


def count_items(path: Path, limit: int = 0) -> int:
    """How many items a sources file holds (up to `limit` when > 0), checked line by line (valid JSON, the
    item schema, a known task with usable options) before anything is generated, one line at a time."""
    return sum(1 for _ in _checked_items(path, {}, limit))


def load_items(path: Path, split: str | None = None):
    """Items of a prepared sources file, plus their Task objects."""
    tasks: dict = {}
    items = list(iter_items(path, tasks))
    return items, tasks
