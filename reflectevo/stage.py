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
    """Bad input -> one line on stderr and exit status 2 (no traceback, nothing half-written).

    Besides ReflectEvoError, an OSError about a named file (a folder where a file is expected, a file
    that cannot be read or written, a full disk) is reported the same way, naming the file."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ReflectEvoError as e:
            print(f"error: {one_line(str(e))}", file=sys.stderr)
            raise SystemExit(2) from None
        except OSError as e:
            if e.filename is None:
                raise
            print(f"error: {e.filename}: {e.strerror or e}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper  # type: ignore[return-value]


def one_line(message: str) -> str:
    """A message as one line (a YAML parser's or a library's message may span several)."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


def stage_params(params_file: Path, section: str, with_model: bool = True):
    """(preset name, preset, section config) for a stage, all validated."""
    from reflectevo.config import load_preset, load_section, read_params

    params = read_params(params_file)
    cfg = load_section(params, section)
    if not with_model:
        return None, None, cfg
    name, preset = load_preset(params)
    return name, preset, cfg


def _checked_items(path: Path, tasks: dict, limit: int = 0):
    """(line, row) of a sources file, each row checked (the unified item schema, a known task with usable
    options) before it is yielded; `tasks` (task name -> Task) is filled as new tasks appear."""
    from reflectevo.jsonio import iter_jsonl_lines
    from reflectevo.tasks import Item, get_task

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
    `tasks` (task name -> Task) is filled as new tasks appear."""
    from reflectevo.tasks import Item

    tasks = {} if tasks is None else tasks
    for _, row in _checked_items(path, tasks):
        yield Item.from_dict(row)


def count_items(path: Path, limit: int = 0) -> int:
    """How many items a sources file holds (up to `limit` when > 0), checked line by line (valid JSON, the
    item schema, a known task) before anything is generated, one line at a time."""
    return sum(1 for _ in _checked_items(path, {}, limit))


def check_episode_shards(raw: Path, first_rows: int = 16) -> list[Path]:
    """The episode shards of a raw folder, each opened and checked (its columns, and its first rows as
    complete episodes) before a stage loads any model: a damaged or foreign shard stops the stage with
    one line naming the file and row before it costs a model load."""
    from reflectevo.curation import check_episode
    from reflectevo.shards import SHARD_GLOB, iter_episodes, shard_files

    if raw.exists() and not raw.is_dir():
        raise ReflectEvoError(f"{raw}: a file, expected the raw episodes folder (generate's output)")
    files = shard_files(raw)
    if not files:
        raise ReflectEvoError(f"{raw}: no episode shards ({SHARD_GLOB}); run the generate stage first")
    for f in files:
        for n, (where, ep) in enumerate(iter_episodes(f, where=True)):
            check_episode(ep, where)
            if n + 1 >= first_rows:
                break
    return files


def load_items(path: Path, split: str | None = None):
    """Items of a prepared sources file, plus their Task objects."""
    tasks: dict = {}
    items = list(iter_items(path, tasks))
    return items, tasks
