"""The backend registry: a preset's `backend:` name -> its class, built with `make_backend`; each class's
sampler and resolved dtype, read without building it (both are part of every episode key)."""


from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from reflectevo.registry import Registry

BACKENDS: Registry[Any] = Registry("backend")
BACKENDS.register("transformers", "reflectevo.backends.hf:TransformersBackend")
BACKENDS.register("vllm", "reflectevo.backends.vllm_backend:VLLMBackend")        # GPU extra: pip install '.[vllm]'
BACKENDS.register("openai", "reflectevo.backends.openai_backend:OpenAIBackend")  # any OpenAI-compatible endpoint
BACKENDS.register("scripted", "reflectevo.backends.scripted:ScriptedBackend")   # no model: a deterministic recipe


def backend_sampler(backend: str, where: str = "") -> str:
    """The sampler tag of backend `backend` (its class attribute `sampler`), without building it.

    Episode keys include it: the same seed gives another sample through another sampler (our inverse-CDF
    draw in transformers, vLLM's per-request seeded sampler, whatever a server does), so episodes drawn
    by different backends never share a key."""
    return BACKENDS.get(backend, where=where).sampler


def backend_dtype(preset: Any, where: str = "") -> str:
    """The dtype the preset's model runs in on this machine, without loading it: `auto` resolved by the
    backend (transformers and vllm: bf16 where fast, else fp32 or fp16); backends without weights here
    (openai, scripted) keep the preset's setting. Episode keys hold it, so episodes made on a CPU in fp32 and
    on a GPU in bf16 never share a key."""
    cls = BACKENDS.get(preset.backend, where=where)
    resolve = getattr(cls, "resolved_dtype", None)
    return resolve(preset) if resolve is not None else preset.dtype


def make_backend(preset_name: str, preset: Any, adapter: Any = None, *, serves: Sequence[Any] = ()) -> Any:
    """Build the backend `preset.backend` names (transformers | vllm | openai) for a model preset.

    Each backend class takes `(preset_name, preset, adapter=None)`; vllm and openai import their
    client libraries only here, so a CPU install never needs them. `serves`: every adapter this process
    will load on the same base (the evaluate stage passes all of them), for backends that serve a base
    and its adapters from one engine (`shares_engine`: vllm sizes that one engine for all of them)."""
    cls = BACKENDS.get(preset.backend, where=f"models.{preset_name}.backend")
    if serves and getattr(cls, "shares_engine", False):
        return cls(preset_name, preset, adapter=adapter, serves=tuple(serves))
    return cls(preset_name, preset, adapter=adapter)
