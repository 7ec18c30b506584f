"""What determines an episode: its content key (`GenSpec.episode_id`) and the seed of each sampled reflection
and retry (`sample_seed`). A rerun computes only the keys it lacks; a sample is the same whatever batch,
chunk, worker or resumed run computes it."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from reflectevo.config.sections import GenerateConfig
from reflectevo.demands import demand_pool
from reflectevo.errors import ReflectEvoError
from reflectevo.prompts import task_prompt_hash
from reflectevo.protocol.version import prompt_version
from reflectevo.tasks import Item, Task

# How sampled reflections are drawn (part of every key): one seed per sample (`sample_seed`), drawn by the
# backend's sampler (`backend.sampler`). This default is the transformers backend's (one random generator
# per row, reflectevo.backends.hf.SeededSampler); vllm and openai have their own, so their keys differ.
SAMPLER = "per-sample-seed-v2"   # v2: inverse-CDF draw (v1 drew with torch.multinomial)


def _h(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


@dataclass(frozen=True)
class GenSpec:
    """Everything besides the item that determines an episode."""

    model: dict[str, str]            # model fingerprint: preset, source, revision
    dtype: str                       # the preset's dtype setting (recorded)
    prompt_version: str
    cfg: GenerateConfig
    sampler: str = SAMPLER           # the backend's sampler (reflectevo.backends.backend_sampler)
    # the trained setting whose adapters write the reflection / retry (reflectevo.adapters): its name and
    # each phase's adapter content hash; empty = the base model writes every phase (keys as before)
    adapters: dict[str, str] = field(default_factory=dict)
    # the dtype the model runs in here (`reflectevo.backends.backend_dtype`: `auto` resolved); None: the setting
    resolved_dtype: str | None = None

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
        """Content key: model, the dtype it runs in, prompt templates, the task's prompt parts, the item,
        generation params."""
        return _h({"model": self.model, "dtype": self.resolved_dtype or self.dtype, "prompt_version": self.prompt_version,
                   "item": item.id, "task": item.task, "item_hash": item.text_hash(),
                   "task_prompt": task_prompt_hash(task), "gen": self.params()})[:20]

    def demand_for(self, item: Item, j: int) -> str | None:
        d = self.demands()
        if not d:
            return None
        return d[(int(_h(item.id)[:8], 16) + j) % len(d)]


def sample_seed(episode_id: str, sample_idx: int, round_: int = 1, phase: str = "") -> int:
    """The seed of one sampled reflection (or, with `phase="retry"`, of its sampled retry): a function
    of its episode key, sample index and round only, so a sample is the same whatever batch, chunk,
    worker or resumed run computes it."""
    tag = f"{episode_id}:{sample_idx}:{round_}" + (f":{phase}" if phase else "")
    return int(hashlib.sha256(tag.encode()).hexdigest()[:15], 16)


def make_spec(model_fp: dict[str, str], dtype: str, cfg: GenerateConfig, sampler: str = SAMPLER,
              adapters: dict[str, str] | None = None, resolved_dtype: str | None = None) -> GenSpec:
    """`adapters`: `GenerationAdapters.key()` of the trained setting that writes reflections and retries;
    `resolved_dtype`: `reflectevo.backends.backend_dtype(preset)`."""
    return GenSpec(model=model_fp, dtype=dtype, prompt_version=prompt_version(), cfg=cfg, sampler=sampler,
                   adapters=dict(adapters or {}), resolved_dtype=resolved_dtype)


def shard_slice(items: Iterable[Item], shard: tuple[int, int]) -> Iterator[Item]:
    """Worker i of n takes every n-th item from i: disjoint, balanced to within one item (streamed: `items`
    may be an iterator over a sources file)."""
    i, n = shard
    if not 0 <= i < n:
        raise ReflectEvoError(f"--shard {i}/{n}: need 0 <= i < n")
    return itertools.islice(items, i, None, n)
