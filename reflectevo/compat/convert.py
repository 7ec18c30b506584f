"""Convert a whole file, either way: theirs -> ours (`import_records`) and ours -> theirs (`export_records`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from reflectevo.compat.curated import dplus_in, dplus_out, pair_in, pair_out
from reflectevo.compat.fields import KINDS, SOURCE, Kind, task_name
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


def _check_source_meta(meta: Any, where: str) -> None:
    """The imported record's metadata we keep under meta.reflectevo (keys, extra fields, verdict tails, the
    outputs' own metadata), as far as exporting reads it."""
    if not isinstance(meta, dict):
        raise ReflectEvoError(f"{where}: field 'meta.{SOURCE}' must be an object, got {type(meta).__name__}")
    for key, value in meta.items():
        if key.endswith("observation") and not isinstance(value, str):
            raise ReflectEvoError(f"{where}: field 'meta.{SOURCE}.{key}' must be a string")
        if key == "keys" and not (value is None or isinstance(value, list) and all(isinstance(k, str) for k in value)):
            raise ReflectEvoError(f"{where}: field 'meta.{SOURCE}.keys' must be a list of strings")
        if key == "extra" and not isinstance(value, (dict, type(None))):
            raise ReflectEvoError(f"{where}: field 'meta.{SOURCE}.extra' must be an object")
        if key == "reflections" and not isinstance(value, (list, type(None))):
            raise ReflectEvoError(f"{where}: field 'meta.{SOURCE}.reflections' must be a list")
        if key == "outputs":
            if not isinstance(value, (list, type(None))):
                raise ReflectEvoError(f"{where}: field 'meta.{SOURCE}.outputs' must be a list")
            for o in value or []:
                if o is not None:
                    _check_source_meta(o, where)


def _check_ours(row: dict[str, Any], kind: str, where: str) -> None:
    """Our record of `kind` (an episode, a D+ / D± / Dpref row), its types as export reads them."""
    holder = row.get("item") if kind == "raw" and isinstance(row.get("item"), dict) else row
    choices = holder.get("choices")
    if choices is not None and not (isinstance(choices, list) and all(isinstance(c, str) for c in choices)):
        raise ReflectEvoError(f"{where}: field 'choices' must be a list of strings or null")
    if kind == "raw":
        if row.get("samples") is not None and not isinstance(row["samples"], list):
            raise ReflectEvoError(f"{where}: field 'samples' must be a list")
    else:
        for key in ("trial1_prompt", "trial2_prompt", "reflection_prompt"):
            if row.get(key) is not None and not isinstance(row[key], str):
                raise ReflectEvoError(f"{where}: field {key!r} must be a string or null")
        for side in ("chosen", "rejected") if kind != "dplus" else ():
            if side not in row:
                continue   # named as missing where it is read
            if not isinstance(row[side], dict):
                raise ReflectEvoError(f"{where}: field {side!r} must be an object")
            if row[side].get("reflection_prompt") is not None and not isinstance(row[side]["reflection_prompt"], str):
                raise ReflectEvoError(f"{where}: field '{side}.reflection_prompt' must be a string or null")
    meta = row.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise ReflectEvoError(f"{where}: field 'meta' must be an object or null")
    if (meta or {}).get(SOURCE) is not None:
        _check_source_meta(meta[SOURCE], where)


def export_records(path: str | Path, kind: str) -> Iterator[dict[str, Any]]:
    """Read our file of `kind` and yield their records."""
    k = _check_kind(kind)
    p = Path(path)
    rows = (iter_episodes_where(p) if k == "raw" and (p.is_dir() or p.name.endswith(".parquet"))
            else ((f"{p}:{line}", row) for line, row in iter_json_objects(p)))
    for where, row in rows:
        _check_ours(row, k, where)
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
