"""Results in either format -> Acc@t1, Acc@t2, Δ rows and ReflectEvo's count.py numbers."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from reflectevo.compat.fields import _bool, _get, _str, task_name
from reflectevo.compat.jsonstream import iter_json_objects
from reflectevo.errors import ReflectEvoError, unknown

Format = Literal["reflectevo", "ours"]
Protocol = Literal["oracle", "intrinsic"]


def detect_format(rec: dict[str, Any]) -> tuple[Format, str]:
    """(format, what) for one record: their raw results, our predictions or our episodes."""
    if "system" in rec and "t1_correct" in rec:   # first: a one-stage prediction has an `output` field too
        return "ours", "predictions"
    if "output" in rec:
        return "reflectevo", "raw"
    if "trial1" in rec and "samples" in rec:
        return "ours", "episodes"
    raise ReflectEvoError("not a results file: expected ReflectEvo raw records ('output'), our predictions "
                          "('system', 't1_correct') or our episodes ('trial1', 'samples')")


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        from reflectevo.episodes.shards import SHARD_GLOB, shard_files

        found = shard_files(path)
        if not found:
            raise ReflectEvoError(f"{path}: no {SHARD_GLOB} shards in this folder")
        return found
    return [path]


def iter_episodes_where(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, episode) from a raw folder's shards or one Parquet shard (reflectevo.episodes.shards)."""
    from reflectevo.episodes.shards import iter_episodes

    return iter_episodes(path, where=True, journals=False)


def _records(f: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, record) of one results file, streamed: a Parquet episode shard or JSON objects."""
    if f.name.endswith(".parquet"):
        from reflectevo.episodes.shards import iter_episodes

        yield from iter_episodes(f, where=True)
        return
    for line, rec in iter_json_objects(f):
        yield f"{f}:{line}", rec


def result_rows(path: str | Path, fmt: str | None = None, task: str | None = None
                ) -> tuple[Format, str, list[dict[str, Any]]]:
    """Per-item rows ``{system, task, t1, t2_first}`` (``t2_first`` None when there was no retry).

    reflectevo raw: t1 = output[0].is_correct, t2_first = output[1].is_correct (later entries ignored,
    as count.py does); our predictions: t1_correct / t2_correct per system; our episodes: t1 =
    trial1.correct, t2_first = the first sample's trial2.correct.
    """
    if fmt is not None and fmt not in ("reflectevo", "ours"):
        raise unknown("format", fmt, ("reflectevo", "ours"))
    rows: list[dict[str, Any]] = []
    detected: tuple[Format, str] | None = None
    for f in _files(Path(path)):
        name = task_name(task, f)
        for where, rec in _records(f):
            try:
                this = detect_format(rec)
            except ReflectEvoError as e:
                raise ReflectEvoError(f"{where}: {e}") from None
            if fmt is not None and this[0] != fmt:
                raise ReflectEvoError(f"{where}: looks like {this[0]!r} {this[1]}, not --format {fmt}")
            if detected is not None and this != detected:
                raise ReflectEvoError(f"{where}: mixes {this[1]} with {detected[1]} records")
            detected = this
            if this[1] == "raw":
                outputs, _ = _get(rec, ("output",), where)
                if not isinstance(outputs, list) or not outputs:
                    raise ReflectEvoError(f"{where}: field 'output' must be a non-empty list")
                t1 = _bool(_get(outputs[0], ("is_correct",), f"{where}: output[0]")[0], "is_correct", where)
                t2 = (_bool(_get(outputs[1], ("is_correct",), f"{where}: output[1]")[0], "is_correct", where)
                      if len(outputs) > 1 else None)
                rows.append({"system": None, "task": name, "t1": t1, "t2_first": t2})
            elif this[1] == "predictions":
                t1 = _bool(rec["t1_correct"], "t1_correct", where)
                t2 = _get(rec, ("t2_correct",), where)[0]
                item_id = rec.get("item_id")
                if not isinstance(item_id, (str, int, type(None))) or isinstance(item_id, bool):
                    raise ReflectEvoError(f"{where}: field 'item_id' must be a string, got {type(item_id).__name__}")
                rows.append({"system": _str(rec["system"], "system", where), "item_id": item_id,
                             "task": _str(_get(rec, ("task",), where)[0], "task", where), "t1": t1,
                             "t2_first": None if t2 is None else _bool(t2, "t2_correct", where)})
            else:
                t1 = _bool(_get(rec["trial1"], ("correct",), f"{where}: trial1")[0], "trial1.correct", where)
                if not isinstance(rec["samples"], list):
                    raise ReflectEvoError(f"{where}: field 'samples' must be a list")
                for j, smp in enumerate(rec["samples"]):
                    idx = _get(smp, ("sample_idx",), f"{where}: samples[{j}]", required=False)[0]
                    if not isinstance(idx, (int, type(None))):
                        raise ReflectEvoError(f"{where}: field 'samples[{j}].sample_idx' must be an integer")
                samples = sorted(rec["samples"], key=lambda s: s.get("sample_idx") or 0)
                t2 = _bool(_get(_get(samples[0], ("trial2",), f"{where}: samples[0]")[0], ("correct",),
                                f"{where}: samples[0].trial2")[0], "samples[0].trial2.correct", where) if samples else None
                rows.append({"system": None, "task": _str(_get(rec, ("task",), where)[0], "task", where),
                             "t1": t1, "t2_first": t2})
    if detected is None:
        raise ReflectEvoError(f"{path}: no records")
    return detected[0], detected[1], rows


def protocol_pairs(rows: Iterable[dict[str, Any]], protocol: str) -> list[dict[str, Any]]:
    """Apply the protocol: rows with ``task``, ``t1_correct`` and ``t2_correct`` for metrics.by_task.

    oracle (count.py): t2 = t1 or t2_first (a retry only happens after a wrong t1, so a right t1 stays
    right; no retry counts as wrong). intrinsic: t2 = t2_first when there was a second answer, even
    after a right t1 (so c->i transitions show), else t1.
    """
    if protocol not in ("oracle", "intrinsic"):
        raise unknown("protocol", protocol, ("oracle", "intrinsic"))
    out = []
    for r in rows:
        t1, t2f = r["t1"], r["t2_first"]
        t2 = (t1 or bool(t2f)) if protocol == "oracle" else (t1 if t2f is None else t2f)
        out.append({"system": r["system"], "item_id": r.get("item_id"), "task": r["task"], "t1_correct": t1,
                    "t2_correct": t2})
    return out


def count_py(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What ReflectEvo's eval/count.py prints for these rows (its four keys, percent strings)."""
    n = len(rows)
    first = sum(1 for r in rows if r["t1"])
    second = sum(1 for r in rows if not r["t1"] and r["t2_first"])
    return {"first_output_correct": first, "acc@t1": f"{(first / n * 100) if n else 0:.2f}%",
            "second_output_correct": second, "acc@t2": f"{((first + second) / n * 100) if n else 0:.2f}%"}
