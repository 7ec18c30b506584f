"""The protocol's version: one hash over what decides a generated episode's prompts and trials, recorded in
every episode and part of its key."""

from __future__ import annotations

import functools
import hashlib

from reflectevo.demands import demand_pool
from reflectevo.prompts import GENERATION_TEMPLATES
from reflectevo.protocol import mechanics


@functools.lru_cache(maxsize=1)
def prompt_version() -> str:
    """'v1-<hash>' over the generation templates and the demand pool: recorded in each generated record.

    Task-specific prompt parts (answer form, few-shot examples) are keyed per task: `task_prompt_hash`."""
    h = hashlib.sha256("\x00".join(GENERATION_TEMPLATES).encode())
    h.update(repr(sorted(demand_pool().items())).encode())
    h.update(repr((mechanics.MECHANICS_VERSION, mechanics.REFLECTION_STOPS, mechanics.ONE_STAGE_STOPS,
                   mechanics.ANSWER_STEP_TOKENS)).encode())
    return f"v2-{h.hexdigest()[:10]}"
