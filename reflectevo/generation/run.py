"""The generate run: episodes already in the output folder are reused by key, missing ones computed chunk by
chunk into a journal (flushed and fsynced per chunk, so a kill loses at most the chunk in flight), then
written as a few large shards (`reflectevo.episodes.shards`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from reflectevo.episodes.shards import ShardWriter, episode_keys, iter_episodes, load_episodes
from reflectevo.errors import ReflectEvoError
from reflectevo.generation.episodes import Stats, generations_per_item, run_chunk
from reflectevo.generation.keys import GenSpec
from reflectevo.jsonio import Journal
from reflectevo.progress import Meter, metered
from reflectevo.tasks import Item, Task

JOURNAL = "journal.jsonl"          # single-process runs; journal-<i>-of-<n>.jsonl, one per shard worker


def journal_name(shard: tuple[int, int] | None) -> str:
    return JOURNAL if shard is None or shard[1] == 1 else f"journal-{shard[0]}-of-{shard[1]}.jsonl"


def plan(items: Sequence[Item], tasks: dict[str, Task], spec: GenSpec,
         raw_dir: Path) -> tuple[dict[str, dict], list[str], list[Item]]:
    """(episodes already in `raw_dir` by key, the key of each item, the items whose key is missing).
    Loads the existing episodes (the Ray engine's driver); `generate_keys` reads only their keys."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    existing = load_episodes(raw_dir)
    keys = [spec.episode_id(it, tasks[it.task]) for it in items]
    return existing, keys, [it for it, k in zip(items, keys) if k not in existing]


def generate_keys(items: Iterable[Item], tasks: dict[str, Task], backend_factory: Callable[[], Any], spec: GenSpec,
                  raw_dir: Path, chunk_size: int = 64, progress: bool = True,
                  shard: tuple[int, int] | None = None, total: int | None = None) -> tuple[list[str], Stats]:
    """Compute the episodes of `items` missing from `raw_dir` into its journal; return the key of each
    item (in item order) and the run's cost. Streams: `items` may be an iterator (read as it goes: see
    `stage.iter_items`, which also fills `tasks`), and only the keys and one chunk of items and new
    episodes are in memory (`write_shards(raw_dir, iter_wanted(raw_dir, keys), ...)` then writes the
    shards the same way). `total`: the number of items, for the progress bar only.

    Finished episodes from earlier runs (same key) are reused; new ones go to a journal, flushed and
    fsynced per chunk, so a kill loses at most the chunk in flight. The backend is only built when
    something is missing.
    """
    raw_dir.mkdir(parents=True, exist_ok=True)
    existing = episode_keys(raw_dir)
    keys: list[str] = []
    stats = Stats()
    t0 = time.perf_counter()
    per_item = generations_per_item(spec.cfg)   # at most: trial 1, then each sample's reflections and retries
    state: dict[str, Any] = {"backend": None, "meter": None, "journal": None}

    def run(chunk: list[Item], chunk_keys: list[str]) -> None:
        if state["backend"] is None:
            # the bar counts generations: every item left, as if each failed trial 1 (run_chunk takes back
            # the samples it does not need once trial 1 is judged; reused items leave the plan)
            left = (total - len(keys) + len(chunk)) if total is not None else len(chunk)
            backend = backend_factory()
            state["meter"] = Meter("generate", left * per_item, enabled=progress)
            state["backend"] = metered(backend, state["meter"])
            state["journal"] = Journal(raw_dir / journal_name(shard)).__enter__()
        elif total is None:
            state["meter"].expect(len(chunk) * per_item)
        backend = state["backend"]
        before = getattr(backend, "prefilled_tokens", None)
        eps = run_chunk(chunk, tasks, backend, spec, stats, ids=chunk_keys, expect=state["meter"].expect)
        if before is not None:
            stats.prefilled_tokens += backend.prefilled_tokens - before
        state["journal"].append_batch(eps)
        stats.seconds = time.perf_counter() - t0

    todo: list[Item] = []
    todo_keys: list[str] = []
    try:
        for it in items:
            k = spec.episode_id(it, tasks[it.task])
            keys.append(k)
            if k in existing:
                stats.reused += 1
                if state["meter"] is not None and total is not None:
                    state["meter"].expect(-per_item)
                continue
            existing.add(k)          # an item listed twice is computed once
            todo.append(it)
            todo_keys.append(k)
            if len(todo) >= chunk_size:
                run(todo, todo_keys)
                todo, todo_keys = [], []
        if todo:
            run(todo, todo_keys)
    finally:
        if state["journal"] is not None:
            state["journal"].__exit__(None, None, None)
        if state["meter"] is not None:
            state["meter"].close()
    stats.seconds = time.perf_counter() - t0
    return keys, stats


def iter_wanted(raw_dir: Path, keys: Sequence[str]) -> Iterator[dict]:
    """The episodes of `keys` found in `raw_dir`, streamed in storage order (earlier shards, then the
    journals); raises when one is missing."""
    wanted = set(keys)
    found = 0
    for ep in iter_episodes(raw_dir):
        if ep["episode_id"] in wanted:
            found += 1
            yield ep
    if found != len(wanted):
        raise ReflectEvoError(f"{raw_dir}: {len(wanted) - found} of {len(wanted)} episodes are missing after "
                              "generation (a journal was removed mid-run?); run the stage again")


def generate(items: Sequence[Item], tasks: dict[str, Task], backend_factory: Callable[[], Any], spec: GenSpec,
             raw_dir: Path, chunk_size: int = 64, progress: bool = True,
             shard: tuple[int, int] | None = None) -> tuple[list[dict], Stats]:
    """`generate_keys`, then every episode of `items` in item order, in memory (small sets, tests)."""
    keys, stats = generate_keys(items, tasks, backend_factory, spec, raw_dir, chunk_size, progress, shard)
    wanted = set(keys)
    by_key = {ep["episode_id"]: ep for ep in iter_episodes(raw_dir) if ep["episode_id"] in wanted}
    return [by_key[k] for k in keys], stats


def write_shards(raw_dir: Path, episodes: Iterable[dict], shard_size: int,
                 on_episode: Callable[[dict], None] | None = None) -> list[Path]:
    """Write episodes (any iterable, consumed once: a stream from `iter_wanted` stays a stream) as a
    few large Parquet shards (`reflectevo.episodes.shards`), then drop the journals and stale shards. Nothing is
    replaced until every shard is written: a failure (a full disk) leaves the previous shards and the
    journals as they were. `on_episode` sees each episode as it is written (the stage's summary)."""
    with ShardWriter(raw_dir, shard_size) as w:
        for ep in episodes:
            w.add(ep)
            if on_episode is not None:
                on_episode(ep)
        return w.commit()
