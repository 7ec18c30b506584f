"""One chunk of train items -> their episode records, through the protocol (`reflectevo.protocol.rounds`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from reflectevo.episodes.record import (EPISODE_VERSION, EpisodeRecord, reflection_record, sample_record,
                                        trial_record)
from reflectevo.generation.keys import GenSpec, sample_seed
from reflectevo.protocol.rounds import Attempt, Job, RoundSpec, first_trials, reflect_retry_step, run_rounds
from reflectevo.tasks import Item, Task


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

    def count(self, gens: Sequence[Any]) -> None:
        self.generations += len(gens)
        self.prompt_tokens += sum(g.n_prompt_tokens for g in gens)
        self.new_tokens += sum(g.n_new_tokens for g in gens)

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "seconds": round(self.seconds, 2),
                "episodes_per_s": round(self.computed / self.seconds, 3) if self.seconds else None,
                "new_tokens_per_s": round(self.new_tokens / self.seconds, 1) if self.seconds else None}


def samples_per_item(cfg) -> int:
    """Samples per failed item (oracle) or per item (intrinsic): `k`, or one greedy retry without reflection."""
    return cfg.k if cfg.reflect or cfg.retry_temperature > 0 else 1


def generations_per_sample(cfg) -> int:
    """At most: a reflection (unless `reflect: false`) and a retry per round."""
    return (2 if cfg.reflect else 1) * cfg.rounds


def generations_per_item(cfg) -> int:
    """At most, per item: trial 1 and every sample's generations (answer steps aside)."""
    return 1 + samples_per_item(cfg) * generations_per_sample(cfg)


def round_spec(spec: GenSpec) -> RoundSpec:
    """The generate params as a protocol round: sampled reflections, the retry as `retry_temperature` says."""
    c = spec.cfg
    return RoundSpec(oracle=c.protocol == "oracle", reflect=c.reflect, max_new_tokens_trial=c.max_new_tokens_trial,
                     max_new_tokens_reflection=c.max_new_tokens_reflection, temperature=c.temperature, top_p=c.top_p,
                     seed=c.seed, retry_temperature=c.retry_temperature, use_previous=c.use_previous_trial,
                     name_rejected=c.name_rejected)


def _record(attempt: Attempt) -> dict[str, Any]:
    return trial_record(attempt.prompt, attempt.gen, attempt.verdict, attempt.text, attempt.sampling, attempt.seed)


def run_chunk(items: Sequence[Item], tasks: dict[str, Task], backend, spec: GenSpec, stats: Stats,
              ids: Sequence[str] | None = None, expect: Callable[[int], None] | None = None) -> list[EpisodeRecord]:
    """Compute the episodes of `items`: trial 1, then per round one batched reflection and retry pass.

    - oracle protocol: failed items get `k` samples, each told its attempt failed;
      intrinsic: every item gets `k` samples and no prompt says whether the attempt was right.
    - `reflect: false` (w/o-reflection baseline): one retry that sees the notice and its attempt only
      (`k` retries when they are sampled: `retry_temperature` > 0).
    - `rounds` > 1: a sample whose retry is still wrong (oracle) or every sample (intrinsic) reflects on
      its latest retry and retries again; rounds 2.. go to the sample's `later_rounds`.
    `backend` is one backend for every phase, or a `reflectevo.protocol.rounds.PhaseBackends` (trial 1 by the
    base, reflections by `reflector`, retries by `corrector`: a trained setting's adapters).
    `expect(n)`: told, once trial 1 is judged, how many of the generations `generations_per_item` counted
    will not run (negative n), for a progress bar.
    """
    cfg = spec.cfg
    rs = round_spec(spec)
    reflector = getattr(backend, "reflector", backend)
    corrector = getattr(backend, "corrector", backend)
    backend = getattr(backend, "trial", backend)
    ids = list(ids) if ids is not None else [spec.episode_id(it, tasks[it.task]) for it in items]   # keys, if known
    bind = getattr(backend, "bind", None)   # the scripted backend answers from the items (no model)
    if bind is not None:
        bind(items, tasks)
    row_tasks = [tasks[it.task] for it in items]

    t1 = first_trials(backend, items, row_tasks, cfg.max_new_tokens_trial)
    stats.count([a.gen for a in t1])

    # without reflection a greedy retry is the same for every sample
    k = samples_per_item(cfg)
    jobs = [Job(it, row_tasks[i], latest=t1[i].text, rejected=t1[i].verdict.extracted, demand=spec.demand_for(it, j),
                seed=lambda rnd, phase, eid=ids[i], j=j: sample_seed(eid, j, rnd, "" if phase == "reflection" else phase),
                key=(i, j))
            for i, it in enumerate(items) if not rs.oracle or not t1[i].verdict.correct for j in range(k)]
    if expect is not None:
        expect((len(jobs) - len(items) * k) * generations_per_sample(cfg))
    run_rounds(jobs, cfg.rounds, rs.oracle, reflect_retry_step(reflector, corrector, rs))
    for job in jobs:
        stats.count([st.reflection.gen for st in job.steps if st.reflection is not None])
        stats.count([st.retry.gen for st in job.steps])

    episodes: list[EpisodeRecord] = []
    for i, it in enumerate(items):
        episodes.append({
            "version": EPISODE_VERSION,
            "episode_id": ids[i], "item_id": it.id, "task": it.task, "item_hash": it.text_hash(),
            "model": spec.model, "dtype": spec.dtype, "resolved_dtype": getattr(backend, "dtype", None),
            "prompt_version": spec.prompt_version, "gen": spec.params(), "item": it.to_dict(),
            "trial1": _record(t1[i]), "samples": [],
        })
    for job in jobs:
        i, j = job.key
        rounds = [(reflection_record(st.reflection.prompt, st.reflection.gen, st.reflection.sampling, st.reflection.seed)
                   if st.reflection is not None else None, _record(st.retry)) for st in job.steps]
        episodes[i]["samples"].append(sample_record(ids[i], j, job.demand, rounds, cfg.rounds > 1))
    stats.computed += len(items)
    return episodes
