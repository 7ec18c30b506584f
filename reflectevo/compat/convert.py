"""Convert a whole file, either way: theirs -> ours (`import_records`) and ours -> theirs (`export_records`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from reflectevo.compat.curated import dplus_in, dplus_out, pair_in, pair_out
from reflectevo.compat.fields import KINDS, Kind, task_name
from reflectevo.compat.jsonstream import iter_json_objects
from reflectevo.compat.raw import episode_to_raw, raw_to_episode
from reflectevo.compat.results import iter_episodes_where
from reflectevo.errors import ReflectEvoError, unknown


def _check_kind(kind: str) -> Kind:
    if kind not in KINDS:
        raise unknown("kind", kind, KINDS)
    return kind  # type: ignore[return-value]


def import_records(path: str | Path, kind: str, task: str | None = None) -> Iterator[dict[str, Any]]:
    """Read their file of `kind` and yield our records (episodes for raw, rows otherwise)."""
    k = _check_kind(kind)
    name = task_name(task, path)
    for line, rec in iter_json_objects(path):
        where = f"{path}:{line}"
        if k == "raw":
            yield raw_to_episode(rec, where, name)
        elif k == "dplus":
            yield dplus_in(rec, where, name)
        else:
            yield pair_in(rec, where, name, k)


def export_records(path: str | Path, kind: str) -> Iterator[dict[str, Any]]:
    """Read our file of `kind` and yield their records."""
    k = _check_kind(kind)
    p = Path(path)
    rows = (iter_episodes_where(p) if k == "raw" and (p.is_dir() or p.name.endswith(".parquet"))
            else ((f"{p}:{line}", row) for line, row in iter_json_objects(p)))
    for where, row in rows:
        if k == "raw":
            yield episode_to_raw(row, where)
        elif k == "dplus":
            yield dplus_out(row, where)
        else:
            yield pair_out(row, where)


def convert(src: str | Path, dst: str | Path, kind: str, direction: Literal["from", "to"],
            task: str | None = None) -> int:
    """Convert a whole file; the output is written atomically only after every record converted."""
    from reflectevo.jsonio import write_jsonl

    if Path(src).resolve() == Path(dst).resolve():
        raise ReflectEvoError(f"{dst}: output must differ from the input")
    # streams record by record into a temporary file that replaces `dst` only at the end
    return write_jsonl(dst, import_records(src, kind, task) if direction == "from" else export_records(src, kind))
