"""Episode shards on disk: a few large Parquet (zstd) files, read and written one chunk at a time.

`data/raw/` holds `episodes-00000-of-00003.parquet`, ... (about `generate.shard_size` episodes each)
plus, while a run is going or after it was killed, its journal(s) `journal*.jsonl`. One Parquet row
is one episode: the full record as JSON text in column `episode`, and the index columns `episode_id`,
`item_id`, `task` and `trial1_correct` (readable alone: planning reads only `episode_id`). Why Parquet
and not compressed JSONL: the measurements are in data/README.md.

**Read raw episodes with `iter_episodes(path)` only**, whatever the format: it streams the shards
(Parquet, or the JSONL shards of earlier versions) and then the journals of an interrupted run, one
row group at a time, and skips a key it has already yielded. With `where=True` it yields
`(where, episode)` pairs, `where` naming the file and the row, for error messages.

Writing (`ShardWriter`) goes to hidden temporary files; `commit()` renames them into place and only
then removes stale shards and the journals, so a write that fails (a full disk, a kill) leaves the
previous shards and the journal as they were, and the next run resumes from them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from reflectevo.episodes.record import INDEX_COLUMNS, arrow_schema, index_values
from reflectevo.errors import ReflectEvoError

SHARD_GLOB = "episodes-*"                 # every shard, any format (the stale-shard sweep and readers)
PARQUET_SUFFIX = ".parquet"
JOURNAL_GLOB = "journal*.jsonl"
ROWS_PER_GROUP = 256                      # episodes per Parquet row group: the unit of reading and writing


def shard_files(raw_dir: Path) -> list[Path]:
    """The finished shards in `raw_dir` (Parquet, and JSONL from earlier versions), in name order."""
    return sorted(p for p in Path(raw_dir).glob(SHARD_GLOB)
                  if p.is_file() and p.name.endswith((PARQUET_SUFFIX, ".jsonl")))


def _parquet_file(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise ReflectEvoError(f"{path}: not a readable Parquet file (truncated or damaged?): {e}") from None


def _parquet_rows(path: Path, columns: list[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow as pa

    f = _parquet_file(path)
    missing = [c for c in columns if c not in f.schema_arrow.names]
    if missing:
        raise ReflectEvoError(f"{path}: no column {missing[0]!r} (columns: {', '.join(f.schema_arrow.names)}); "
                              "not an episode shard")
    for c in columns:   # text columns as any Arrow string type (other writers use large_string), flags as bool
        got = f.schema_arrow.field(c).type
        ok = pa.types.is_boolean(got) if c == "trial1_correct" else (pa.types.is_string(got) or pa.types.is_large_string(got))
        if not ok:
            raise ReflectEvoError(f"{path}: column {c!r} holds {got}, not {'bool' if c == 'trial1_correct' else 'string'} "
                                  "values; not an episode shard")
    row = 0
    try:   # one row group at a time (iter_batches buffers far ahead: memory grew with the file)
        for g in range(f.num_row_groups):
            batch = f.read_row_group(g, columns=columns, use_threads=False)
            cols = [batch.column(c).to_pylist() for c in columns]
            for values in zip(*cols):
                yield row, dict(zip(columns, values))
                row += 1
    except (pa.ArrowException, OSError, UnicodeDecodeError) as e:   # a damaged page may hold non-UTF-8 "text"
        raise ReflectEvoError(f"{path}: not a readable Parquet file after row {row} (truncated or damaged?): {e}") from None


def _loads(text: str | bytes, where: str) -> dict[str, Any]:
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise ReflectEvoError(f"{where}: malformed episode JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ReflectEvoError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _iter_file(path: Path, tolerate_torn_tail: bool = False) -> Iterator[tuple[str, dict[str, Any]]]:
    if path.name.endswith(PARQUET_SUFFIX):
        for row, rec in _parquet_rows(path, ["episode"]):
            where = f"{path}: row {row + 1}"
            if rec["episode"] is None:
                raise ReflectEvoError(f"{where}: empty episode")
            yield where, _loads(rec["episode"], where)
        return
    from reflectevo.jsonio import iter_jsonl_lines

    for line, obj in iter_jsonl_lines(path, tolerate_torn_tail=tolerate_torn_tail):
        yield f"{path}:{line}", obj


def iter_episodes(path: str | Path, where: bool = False, journals: bool = True) -> Iterator[Any]:
    """Every raw episode under `path` (a raw folder: its shards, then its journals; or one shard file),
    streamed one row group at a time; an episode key seen before is skipped. With `where`, yields
    `(where, episode)` with `where` naming the file and row. A damaged file raises ReflectEvoError
    naming it."""
    path = Path(path)
    if path.is_file():
        files = [(path, False)]
    elif path.is_dir():
        files = [(p, False) for p in shard_files(path)]
        if journals:
            files += [(p, True) for p in sorted(path.glob(JOURNAL_GLOB))]
    else:
        raise ReflectEvoError(f"{path}: no such file or folder")
    seen: set[str] = set()
    for f, torn_ok in files:
        for w, ep in _iter_file(f, tolerate_torn_tail=torn_ok):
            key = ep.get("episode_id")
            if isinstance(key, str):   # (another type is the reader's to refuse, naming the row)
                if key in seen:
                    continue
                seen.add(key)
            yield (w, ep) if where else ep


def load_episodes(raw_dir: Path) -> dict[str, dict]:
    """Every episode already on disk (finished shards, then the journal of an interrupted run), by key.
    Holds them all in memory: for small sets and tests; stages stream with `iter_episodes`."""
    return {ep["episode_id"]: ep for ep in iter_episodes(raw_dir)}


def episode_keys(raw_dir: str | Path) -> set[str]:
    """The keys of every episode in `raw_dir` (shards and journals), reading only the key column of
    Parquet shards."""
    raw_dir = Path(raw_dir)
    keys: set[str] = set()
    if not raw_dir.is_dir():
        return keys
    for f in shard_files(raw_dir):
        if f.name.endswith(PARQUET_SUFFIX):
            keys.update(str(r["episode_id"]) for _, r in _parquet_rows(f, ["episode_id"]))
        else:
            keys.update(str(ep.get("episode_id")) for _, ep in _iter_file(f))
    for j in sorted(raw_dir.glob(JOURNAL_GLOB)):
        keys.update(str(ep.get("episode_id")) for _, ep in _iter_file(j, tolerate_torn_tail=True))
    return keys


class ShardWriter:
    """Write episodes as Parquet shards of `shard_size` rows into hidden temporary files; `commit()`
    puts them in place as `episodes-<i>-of-<n>.parquet` and removes stale shards and the journals;
    `abort()` (or an exception inside `with`) removes the temporary files and touches nothing else."""

    def __init__(self, raw_dir: str | Path, shard_size: int, rows_per_group: int = ROWS_PER_GROUP) -> None:
        self.raw_dir = Path(raw_dir)
        self.raw_dir.mkdir(parents=True, exist_ok=True)
        self.shard_size = max(1, int(shard_size))
        self.rows_per_group = max(1, min(rows_per_group, self.shard_size))
        self.count = 0
        self._tmps: list[Path] = []
        self._writer = None
        self._in_shard = 0
        self._buf: list[dict[str, Any]] = []
        for stale in self.raw_dir.glob(".episodes-*.parquet.tmp"):   # left by a killed writer
            stale.unlink()

    def add(self, ep: dict[str, Any]) -> None:
        self._buf.append(ep)
        self.count += 1
        if len(self._buf) >= self.rows_per_group or self._in_shard + len(self._buf) >= self.shard_size:
            self._flush()

    def extend(self, eps: Iterable[dict[str, Any]]) -> None:
        for ep in eps:
            self.add(ep)

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        while self._buf:
            if self._writer is None:
                tmp = self.raw_dir / f".episodes-{len(self._tmps):05d}.parquet.tmp"
                self._tmps.append(tmp)
                self._writer = pq.ParquetWriter(tmp, arrow_schema(), compression="zstd",
                                                use_dictionary=["task"], write_statistics=list(INDEX_COLUMNS))
                self._in_shard = 0
            take = self._buf[: self.shard_size - self._in_shard]
            del self._buf[: len(take)]
            index = [index_values(e) for e in take]
            table = pa.table({**{c: [x[c] for x in index] for c in INDEX_COLUMNS},
                              "episode": [orjson.dumps(e, option=orjson.OPT_NON_STR_KEYS).decode() for e in take]},
                             schema=arrow_schema())
            self._writer.write_table(table, row_group_size=self.rows_per_group)
            self._in_shard += len(take)
            if self._in_shard >= self.shard_size:
                self._close_current()

    def _close_current(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            with open(self._tmps[-1], "rb") as fh:
                os.fsync(fh.fileno())

    def commit(self) -> list[Path]:
        self._flush()
        self._close_current()
        if not self._tmps:   # no episodes: one empty shard, so readers see a finished (empty) run
            import pyarrow.parquet as pq

            tmp = self.raw_dir / ".episodes-00000.parquet.tmp"
            pq.write_table(arrow_schema().empty_table(), tmp, compression="zstd")
            self._tmps.append(tmp)
        n = len(self._tmps)
        final = [self.raw_dir / f"episodes-{i:05d}-of-{n:05d}{PARQUET_SUFFIX}" for i in range(n)]
        for tmp, dst in zip(self._tmps, final):
            os.replace(tmp, dst)
        self._tmps = []
        for old in shard_files(self.raw_dir):
            if old not in final:
                old.unlink()
        for journal in self.raw_dir.glob(JOURNAL_GLOB):
            journal.unlink()
        return final

    def abort(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            except OSError:   # the disk that failed the write may fail the close too: the file goes anyway
                pass
            self._writer = None
        for tmp in self._tmps:
            tmp.unlink(missing_ok=True)
        self._tmps = []
        self._buf = []

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, *_: object) -> None:
        if exc_type is not None:
            self.abort()


def check_shards(raw: str | Path, first_rows: int = 16) -> list[Path]:
    """The episode shards of a raw folder, each opened and checked (its columns, and its first rows as complete
    episodes, `record.check_episode`) before a stage loads any model: a damaged or foreign shard stops the stage
    with one line naming the file and row before it costs a model load."""
    from reflectevo.episodes.record import check_episode

    raw = Path(raw)
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
