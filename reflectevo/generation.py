"""The generate stage's logic: ReflectEvo episodes, computed in chunks and journaled.

An episode is one train item: trial 1 (greedy, verified); if wrong, `k` reflections sampled under
demand instructions, each followed by a greedy trial 2 (verified). Every prompt is stored exactly as
sent, before generation. Each reflection sample sees trial 1 (never an earlier retry); no prompt
carries the gold answer, only the binary failure notice.

Episodes are keyed by a hash of everything that determines them, so a rerun computes only missing
keys, and a run killed mid-way resumes from its journal.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reflectevo.backends import Sampling
from reflectevo.config.loader import to_dict
from reflectevo.config.sections import GenerateConfig
from reflectevo.jsonio import Journal
from reflectevo.mechanics import attempt_text, reflection_sampling, run_trials, trial_sampling
from reflectevo.prompts import (
    demand_pool,
    prompt_version,
    reflection_messages,
    task_prompt_hash,
    trial_messages,
)
from reflectevo.shards import JOURNAL_GLOB, SHARD_GLOB, ShardWriter, episode_keys, iter_episodes
from reflectevo.tasks import Item, Task, Verdict

JOURNAL = "journal.jsonl"          # single-process runs; journal-<i>-of-<n>.jsonl, one per shard worker
# How sampled reflections are drawn (part of every key): one seed per sample (`sample_seed`), drawn by the
# backend's sampler (`backend.sampler`). This default is the transformers backend's (one random generator
# per row, reflectevo.backends.hf.SeededSampler); vllm and openai have their own, so their keys differ.
SAMPLER = "per-sample-seed-v2"   # v2: inverse-CDF draw (v1 drew with torch.multinomial)


def shard_slice(items: Iterable[Item], shard: tuple[int, int]) -> Iterator[Item]:
    """Worker i of n takes every n-th item from i: disjoint, balanced to within one item (streamed: `items`
    may be an iterator over a sources file)."""
    import itertools

    i, n = shard
    if not 0 <= i < n:
        from reflectevo.errors import ReflectEvoError

        raise ReflectEvoError(f"--shard {i}/{n}: need 0 <= i < n")
    return itertools.islice(items, i, None, n)


def journal_name(shard: tuple[int, int] | None) -> str:
    return JOURNAL if shard is None or shard[1] == 1 else f"journal-{shard[0]}-of-{shard[1]}.jsonl"


def _h(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


@dataclass(frozen=True)
class GenSpec:
    """Everything besides the item that determines an episode."""

    model: dict[str, str]            # model fingerprint: preset, source, revision
    dtype: str                       # the preset's dtype setting (not the resolved one)
    prompt_version: str
    cfg: GenerateConfig
    sampler: str = SAMPLER           # the backend's sampler (reflectevo.backends.backend_sampler)
    # the trained setting whose adapters write the reflection / retry (reflectevo.adapters): its name and
    # each phase's adapter content hash; empty = the base model writes every phase (keys as before)
    adapters: dict[str, str] = field(default_factory=dict)

    def demands(self) -> list[str]:
        if not self.cfg.reflect or self.cfg.protocol != "oracle":
            return []  # the intrinsic reflection prompt and the w/o-reflection retry take no demand
        pool = list(demand_pool())
        return pool if "all" in self.cfg.demands else list(self.cfg.demands)

    def params(self) -> dict[str, Any]:
        c = self.cfg
        return {"k": c.k, "demands": self.demands(), "temperature": c.temperature, "top_p": c.top_p,
                "max_new_tokens_trial": c.max_new_tokens_trial,
                "max_new_tokens_reflection": c.max_new_tokens_reflection,
                "use_previous_trial": c.use_previous_trial, "protocol": c.protocol, "reflect": c.reflect,
                "rounds": c.rounds, "retry_temperature": c.retry_temperature, "name_rejected": c.name_rejected,
                "seed": c.seed, "sampler": self.sampler, **({"adapters": dict(self.adapters)} if self.adapters else {})}

    def episode_id(self, item: Item, task: Task) -> str:
        """Content key: model, dtype, prompt templates, the task's prompt parts, the item, generation params."""
        return _h({"model": self.model, "dtype": self.dtype, "prompt_version": self.prompt_version,
                   "item": item.id, "task": item.task, "item_hash": item.text_hash(),
                   "task_prompt": task_prompt_hash(task), "gen": self.params()})[:20]

    def demand_for(self, item: Item, j: int) -> str:
        d = self.demands()
        return d[(int(_h(item.id)[:8], 16) + j) % len(d)]


@dataclass
class Stats:
    """The cost of one run: what was reused, what was computed, tokens and time."""

    reused: int = 0
    computed: int = 0
    generations: int = 0
    prompt_tokens: int = 0
    new_tokens: int = 0
    prefilled_tokens: int = 0          # prompt tokens actually computed (shared prompt prefixes count once)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "seconds": round(self.seconds, 2),
                "episodes_per_s": round(self.computed / self.seconds, 3) if self.seconds else None,
                "new_tokens_per_s": round(self.new_tokens / self.seconds, 1) if self.seconds else None}


def _trial_record(prompt: str, gen, verdict: Verdict, task: Task, sampling: Sampling | None = None,
                  seed: int | None = None) -> dict[str, Any]:
    """A trial as recorded: the prompt as sent (ending with the task's prefix), the generated text, the
    attempt later prompts show (prefix + completion), why generation stopped, tokens and the verdict."""
    rec = {"prompt": prompt, "completion": gen.text, "attempt": attempt_text(prompt, gen.text, task),
           "stop_reason": gen.stop_reason, "forced_answer": gen.forced, "n_prompt_tokens": gen.n_prompt_tokens,
           "n_new_tokens": gen.n_new_tokens, **verdict.to_dict()}
    if sampling is not None and sampling.temperature > 0:
        rec["sampling"] = {**sampling.to_dict(), "seed": seed}
    return rec


def sample_seed(episode_id: str, sample_idx: int, round_: int = 1, phase: str = "") -> int:
    """The seed of one sampled reflection (or, with `phase="retry"`, of its sampled retry): a function
    of its episode key, sample index and round only, so a sample is the same whatever batch, chunk,
    worker or resumed run computes it."""
    tag = f"{episode_id}:{sample_idx}:{round_}" + (f":{phase}" if phase else "")
    return int(hashlib.sha256(tag.encode()).hexdigest()[:15], 16)


def _reflection_record(prompt: str, gen, sampling: Sampling, seed: int) -> dict[str, Any]:
    return {"prompt": prompt, "text": gen.text, "stop_reason": gen.stop_reason,
            "n_prompt_tokens": gen.n_prompt_tokens, "n_new_tokens": gen.n_new_tokens,
            "sampling": {**sampling.to_dict(), "seed": seed}}


def run_chunk(items: Sequence[Item], tasks: dict[str, Task], backend, spec: GenSpec, stats: Stats,
              ids: Sequence[str] | None = None) -> list[dict]:
    """Compute the episodes of `items`: one batched pass per phase (trial 1, then per round: reflect, retry).

    - oracle protocol: failed items get `k` samples, each told its attempt failed;
      intrinsic: every item gets `k` samples and no prompt says whether the attempt was right.
    - `reflect: false` (w/o-reflection baseline): one retry that sees the notice and its attempt only
      (`k` retries when they are sampled: `retry_temperature` > 0).
    - `rounds` > 1: a sample whose retry is still wrong (oracle) or every sample (intrinsic) reflects on
      its latest retry and retries again; rounds 2.. go to the sample's `later_rounds`.
    Round 1 of every sample sees trial 1 (never another sample's retry); no prompt carries the answer.
    Trials stop at their first complete answer and reflections at their own end (`reflectevo.mechanics`).
    `backend` is one backend for every phase, or a `reflectevo.adapters.PhaseBackends` (trial 1 by the base,
    reflections by `reflector`, retries by `corrector`: a trained setting's adapters).
    """
    cfg = spec.cfg
    reflector = getattr(backend, "reflector", backend)
    corrector = getattr(backend, "corrector", backend)
    backend = getattr(backend, "trial", backend)
    oracle = cfg.protocol == "oracle"
    refl_sampling = reflection_sampling(cfg.max_new_tokens_reflection, cfg.temperature, cfg.top_p, cfg.seed)
    ids = list(ids) if ids is not None else [spec.episode_id(it, tasks[it.task]) for it in items]   # keys, if known
    bind = getattr(backend, "bind", None)   # the scripted backend answers from the items (no model)
    if bind is not None:
        bind(items, tasks)

    def count(gens) -> None:
        stats.generations += len(gens)
        stats.prompt_tokens += sum(g.n_prompt_tokens for g in gens)
        stats.new_tokens += sum(g.n_new_tokens for g in gens)

    # trial 1 (greedy)
    t1_prompts, t1 = run_trials(backend, tasks, items, [trial_messages(tasks[it.task], it) for it in items],
                                cfg.max_new_tokens_trial)
    count(t1)
    t1_v = [tasks[it.task].verify(g.text, it) for it, g in zip(items, t1)]
    t1_att = [attempt_text(p, g.text, tasks[it.task]) for p, g, it in zip(t1_prompts, t1, items)]

    # without reflection a greedy retry is the same for every sample
    k = cfg.k if cfg.reflect or cfg.retry_temperature > 0 else 1
    jobs = [(i, j, spec.demand_for(it, j) if cfg.reflect and oracle else None)
            for i, it in enumerate(items) if oracle is False or not t1_v[i].correct for j in range(k)]
    latest = [t1_att[i] for i, _, _ in jobs]                # what the next reflection / retry looks at
    rejected = [t1_v[i].extracted for i, _, _ in jobs]       # the latest rejected answer (name_rejected)
    rounds: list[list[dict[str, Any]]] = [[] for _ in jobs]  # per job: one record per round
    active = list(range(len(jobs)))
    for rnd in range(1, cfg.rounds + 1):
        if not active:
            break
        refl: list[Any] = [None] * len(active)
        r_prompts: list[str | None] = [None] * len(active)
        seeds = [sample_seed(ids[jobs[a][0]], jobs[a][1], rnd) for a in active]
        if cfg.reflect:
            r_prompts = [reflector.render(reflection_messages(items[jobs[a][0]], latest[a], jobs[a][2], oracle=oracle))
                         for a in active]
            refl = reflector.generate(r_prompts, refl_sampling, seeds=seeds)
            count(refl)
        msgs = [trial_messages(tasks[items[jobs[a][0]].task], items[jobs[a][0]],
                               reflection=r.text if r is not None else None,
                               previous=latest[a] if cfg.use_previous_trial else None, retry=True, oracle=oracle,
                               rejected=rejected[a] if cfg.name_rejected and oracle else None)
                for a, r in zip(active, refl)]
        retry_seeds = [sample_seed(ids[jobs[a][0]], jobs[a][1], rnd, "retry") for a in active]
        t2_prompts, t2 = run_trials(corrector, tasks, [items[jobs[a][0]] for a in active], msgs,
                                    cfg.max_new_tokens_trial, cfg.retry_temperature, cfg.top_p,
                                    seeds=retry_seeds if cfg.retry_temperature > 0 else None)
        count(t2)
        still = []
        for a, rp, r, seed, tp, g, rs in zip(active, r_prompts, refl, seeds, t2_prompts, t2, retry_seeds):
            it = items[jobs[a][0]]
            task = tasks[it.task]
            v = task.verify(g.text, it)
            retry_sampling = trial_sampling(task, cfg.max_new_tokens_trial, cfg.retry_temperature, cfg.top_p)
            rounds[a].append({"reflection": _reflection_record(rp, r, refl_sampling, seed) if r is not None else None,
                              "trial": _trial_record(tp, g, v, task, retry_sampling, rs)})
            latest[a] = attempt_text(tp, g.text, task)
            if v.extracted is not None:
                rejected[a] = v.extracted
            if not oracle or not v.correct:
                still.append(a)
        active = still

    episodes = []
    for i, it in enumerate(items):
        episodes.append({
            "episode_id": ids[i], "item_id": it.id, "task": it.task, "item_hash": it.text_hash(),
            "model": spec.model, "dtype": spec.dtype, "resolved_dtype": getattr(backend, "dtype", None),
            "prompt_version": spec.prompt_version, "gen": spec.params(), "item": it.to_dict(),
            "trial1": _trial_record(t1_prompts[i], t1[i], t1_v[i], tasks[it.task]), "samples": [],
        })
    for (i, j, d), recs in zip(jobs, rounds):
        sample = {"sample_id": f"{ids[i]}-{j}", "sample_idx": j, "demand_id": d,
                  "reflection": recs[0]["reflection"], "trial2": recs[0]["trial"]}
        if cfg.rounds > 1:
            sample["later_rounds"] = [{"round": n, **rec} for n, rec in enumerate(recs[1:], start=2)]
        episodes[i]["samples"].append(sample)
    stats.computed += len(items)
    return episodes


def load_episodes(raw_dir: Path) -> dict[str, dict]:
    """Every episode already on disk (finished shards, then the journal of an interrupted run), by key.
    Holds them all in memory: for small sets and tests; stages stream with `iter_episodes`."""
    return {ep["episode_id"]: ep for ep in iter_episodes(raw_dir)}


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
    state: dict[str, Any] = {"backend": None, "bar": None, "journal": None}

    def run(chunk: list[Item], chunk_keys: list[str]) -> None:
        if state["backend"] is None:
            state["backend"] = backend_factory()
            state["bar"] = _progress(total, progress)
            state["journal"] = Journal(raw_dir / journal_name(shard)).__enter__()
        backend = state["backend"]
        before = getattr(backend, "prefilled_tokens", None)
        eps = run_chunk(chunk, tasks, backend, spec, stats, ids=chunk_keys)
        if before is not None:
            stats.prefilled_tokens += backend.prefilled_tokens - before
        state["journal"].append_batch(eps)
        stats.seconds = time.perf_counter() - t0
        if state["bar"] is not None:
            cost = stats.to_dict()
            state["bar"].update(len(chunk))
            state["bar"].set_postfix(ep_s=cost["episodes_per_s"], tok_s=cost["new_tokens_per_s"])

    todo: list[Item] = []
    todo_keys: list[str] = []
    try:
        for it in items:
            k = spec.episode_id(it, tasks[it.task])
            keys.append(k)
            if k in existing:
                stats.reused += 1
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
        if state["bar"] is not None:
            state["bar"].close()
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
        from reflectevo.errors import ReflectEvoError

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


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="episodes", unit="ep")


class Summary:
    """`summarize` one episode at a time (`add`), for the stage that streams its episodes."""

    def __init__(self) -> None:
        from reflectevo.diagnostics import EpisodeDiagnostics

        self.per_task: dict[str, dict[str, Any]] = {}
        self.diagnostics = EpisodeDiagnostics()

    def add(self, ep: dict) -> None:
        pt = self.per_task.setdefault(ep["task"], {"items": 0, "trial1_correct": 0, "reflections": 0, "trial2_correct": 0})
        pt["items"] += 1
        pt["trial1_correct"] += int(ep["trial1"]["correct"])
        pt["reflections"] += len(ep["samples"])
        pt["trial2_correct"] += sum(int(s["trial2"]["correct"]) for s in ep["samples"])
        self.diagnostics.add(ep)

    def result(self, stats: Stats) -> dict[str, Any]:
        per_task = self.per_task
        total = {k: sum(pt[k] for pt in per_task.values()) for k in ("items", "trial1_correct", "reflections", "trial2_correct")}
        return {**total, "per_task": per_task, "diagnostics": self.diagnostics.result(), "run": stats.to_dict()}


def summarize(episodes: Iterable[dict], stats: Stats) -> dict[str, Any]:
    """Counts over all episodes (reused or new) plus the cost of what this run computed."""
    acc = Summary()
    for ep in episodes:
        acc.add(ep)
    return acc.result(stats)


def write_shards(raw_dir: Path, episodes: Iterable[dict], shard_size: int,
                 on_episode: Callable[[dict], None] | None = None) -> list[Path]:
    """Write episodes (any iterable, consumed once: a stream from `iter_wanted` stays a stream) as a
    few large Parquet shards (`reflectevo.shards`), then drop the journals and stale shards. Nothing is
    replaced until every shard is written: a failure (a full disk) leaves the previous shards and the
    journals as they were. `on_episode` sees each episode as it is written (the stage's summary)."""
    with ShardWriter(raw_dir, shard_size) as w:
        for ep in episodes:
            w.add(ep)
            if on_episode is not None:
                on_episode(ep)
        return w.commit()


def make_spec(model_fp: dict[str, str], dtype: str, cfg: GenerateConfig, sampler: str = SAMPLER,
              adapters: dict[str, str] | None = None) -> GenSpec:
    """`adapters`: `GenerationAdapters.key()` of the trained setting that writes reflections and retries."""
    return GenSpec(model=model_fp, dtype=dtype, prompt_version=prompt_version(), cfg=cfg, sampler=sampler,
                   adapters=dict(adapters or {}))


__all__ = ["JOURNAL_GLOB", "SHARD_GLOB", "GenSpec", "Stats", "Summary", "generate", "generate_keys", "iter_episodes",
           "iter_wanted", "load_episodes", "make_spec", "plan", "run_chunk", "summarize", "to_dict", "write_shards"]
