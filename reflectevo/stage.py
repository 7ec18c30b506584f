"""Shared plumbing for the thin stage scripts in stages/: params loading and error reporting."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from reflectevo.errors import ReflectEvoError

F = TypeVar("F", bound=Callable[..., Any])

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def friendly_errors(fn: F) -> F:
    """Bad input -> one line on stderr and exit status 2 (no traceback, nothing half-written)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ReflectEvoError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper  # type: ignore[return-value]


def stage_params(params_file: Path, section: str, with_model: bool = True):
    """(preset name, preset, section config) for a stage, all validated."""
    from reflectevo.config.params import load_section, read_params
    from reflectevo.config.presets import load_preset

    params = read_params(params_file)
    cfg = load_section(params, section)
    if not with_model:
        return None, None, cfg
    name, preset = load_preset(params)
    return name, preset, cfg


def iter_items(path: Path, tasks: dict | None = None):
    """The items of a prepared sources file, one at a time (a 460K-item file is never held in memory);
    `tasks` (task name -> Task) is filled as new tasks appear."""
    from reflectevo.jsonio import iter_jsonl
    from reflectevo.tasks import Item, get_task

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
    from reflectevo.jsonio import iter_jsonl_lines

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
