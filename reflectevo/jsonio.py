"""JSONL reading with file:line errors, and atomic / crash-safe writing.

Outputs are written to a temporary file in the same folder, fsynced, then renamed into place, so a
reader never sees half a file (and the next writer of the same file removes a temporary one a kill left). Journals (append + flush + fsync per batch) let a killed run resume:
a truncated last line is the only damage a crash can do, and `read_jsonl(..., tolerate_torn_tail=True)`
drops it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from reflectevo.errors import ReflectEvoError


def _unreadable(path: Path, e: OSError, what: str) -> ReflectEvoError:
    if isinstance(e, FileNotFoundError):
        return ReflectEvoError(f"{path}: {what} not found")
    if isinstance(e, IsADirectoryError):
        return ReflectEvoError(f"{path}: is a folder, expected a {what}")
    if isinstance(e, NotADirectoryError):
        return ReflectEvoError(f"{path}: not found (a part of the path is a file, not a folder)")
    if isinstance(e, PermissionError):
        return ReflectEvoError(f"{path}: cannot read the {what} (permission denied)")
    return ReflectEvoError(f"{path}: cannot read the {what} ({e.strerror or e})")


@contextmanager
def open_input(path: str | Path, what: str = "file") -> Iterator[IO[bytes]]:
    """Open an input file for reading (binary): a missing file, a folder where a file is expected or an
    unreadable one raises one ReflectEvoError naming `path` (`what` says what the file is)."""
    path = Path(path)
    try:
        fh = path.open("rb")
    except OSError as e:
        raise _unreadable(path, e, what) from None
    with fh:
        try:
            yield fh
        except OSError as e:   # a read that fails midway (a folder on some systems, an I/O error)
            if e.filename is not None and Path(e.filename) != path:
                raise
            raise _unreadable(path, e, what) from None


def read_input_bytes(path: str | Path, what: str = "file") -> bytes:
    """The whole content of an input file (see `open_input` for the errors)."""
    with open_input(path, what) as fh:
        return fh.read()


def read_input_text(path: str | Path, what: str = "file") -> str:
    """An input file as UTF-8 text; bytes that are not UTF-8 raise one ReflectEvoError naming file:line."""
    data = read_input_bytes(path, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ReflectEvoError(f"{path}:{line}: not UTF-8 text (byte offset {e.start})") from None


def read_input_json(path: str | Path, what: str = "JSON file") -> Any:
    """A JSON file's content; malformed JSON raises one ReflectEvoError naming file:line."""
    text = read_input_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ReflectEvoError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None


def iter_jsonl(path: str | Path, tolerate_torn_tail: bool = False) -> Iterator[dict[str, Any]]:
    """Yield one dict per non-empty line; a bad line raises ReflectEvoError naming file:line.

    With `tolerate_torn_tail`, an unparsable *last* line without a trailing newline (what a killed
    writer leaves) is skipped instead. Streams: one line in memory at a time.
    """
    for _, obj in iter_jsonl_lines(path, tolerate_torn_tail):
        yield obj


def iter_jsonl_lines(path: str | Path, tolerate_torn_tail: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
    """As `iter_jsonl`, yielding (line number, object)."""
    import orjson

    path = Path(path)
    with open_input(path, "file") as fh:
        i = 0
        for raw in fh:
            i += 1
            if not raw.strip():
                continue
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError:
                try:  # what orjson refuses and json reads (NaN, huge integers), or a clearer message
                    obj = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    if tolerate_torn_tail and not raw.endswith(b"\n"):   # only the last line can lack it
                        return
                    msg = e.msg if hasattr(e, "msg") else str(e)
                    raise ReflectEvoError(f"{path}:{i}: malformed JSON line ({msg})") from None
            if not isinstance(obj, dict):
                raise ReflectEvoError(f"{path}:{i}: expected a JSON object, got {type(obj).__name__}")
            yield i, obj


def read_jsonl(path: str | Path, tolerate_torn_tail: bool = False) -> list[dict[str, Any]]:
    return list(iter_jsonl(path, tolerate_torn_tail))


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, sort_keys=False, separators=(",", ":"))


def _temp_beside(path: Path) -> tuple[int, str]:
    """A new temporary file beside `path` (`.<name>.<random>.tmp`), after removing the ones a killed writer of
    `path` left there: an output folder never keeps a stale half-written copy."""
    import glob

    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)
    return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)


@contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temp file next to `path`; on clean exit fsync and rename it over `path`."""
    path = Path(path)
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    n = 0
    with atomic_open(path) as fh:
        for row in rows:
            fh.write(dumps(row) + "\n")
            n += 1
    return n


class JsonlWriter:
    """A JSONL output written row by row into a temporary file beside `path`; `commit()` fsyncs and
    renames it into place, `abort()` removes it (the previous `path`, if any, stays as it was)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        fd, tmp = _temp_beside(self.path)
        self._tmp = Path(tmp)
        self._fh: IO[str] | None = os.fdopen(fd, "w", encoding="utf-8")
        self.count = 0

    def write(self, row: dict[str, Any]) -> None:
        import orjson

        assert self._fh is not None
        self._fh.write(orjson.dumps(row, option=orjson.OPT_NON_STR_KEYS).decode() + "\n")
        self.count += 1

    def commit(self) -> int:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None
            os.replace(self._tmp, self.path)
        return self.count

    def abort(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self._tmp.unlink(missing_ok=True)


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_open(path) as fh:
        json.dump(obj, fh, ensure_ascii=False, indent=2, sort_keys=False)
        fh.write("\n")


def write_text(path: str | Path, text: str) -> None:
    with atomic_open(path) as fh:
        fh.write(text)


class Journal:
    """Append-only JSONL journal: each `append_batch` is flushed and fsynced before returning."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A torn tail left by a killed writer is cut off, so the journal stays valid JSONL.
        if self.path.exists() and self.path.stat().st_size:
            with self.path.open("r+b") as fh:   # look at the tail only: a journal may be gigabytes
                end = fh.seek(0, os.SEEK_END)
                fh.seek(end - 1)
                if fh.read(1) != b"\n":
                    pos = end
                    while pos > 0:
                        step = min(1 << 20, pos)
                        fh.seek(pos - step)
                        block = fh.read(step)
                        cut = block.rfind(b"\n")
                        if cut >= 0:
                            pos = pos - step + cut + 1
                            break
                        pos -= step
                    fh.truncate(max(pos, 0))
        self._fh = self.path.open("a", encoding="utf-8")

    def append_batch(self, rows: Iterable[dict[str, Any]]) -> None:
        import orjson

        for row in rows:
            self._fh.write(orjson.dumps(row, option=orjson.OPT_NON_STR_KEYS).decode() + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
