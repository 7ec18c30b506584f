"""The backends a generate run uses: the base model's, or one per protocol phase for a trained setting's
adapters (self-evolution)."""

from __future__ import annotations

from typing import Any

from reflectevo.adapters import GenerationAdapters
from reflectevo.backends.registry import make_backend
from reflectevo.protocol.rounds import PhaseBackends


def build_phase_backends(preset_name: str, preset: Any, adapters: GenerationAdapters | None) -> Any:
    """The base backend, or with `adapters` a `PhaseBackends` (every backend names all adapter paths, so
    vLLM starts one engine for the base and its LoRAs; an openai backend asks the server for each
    adapter by `served_name`)."""
    if adapters is None:
        return make_backend(preset_name, preset)
    serves = sorted({str(p) for p in adapters.paths.values()})
    base = make_backend(preset_name, preset, serves=serves)
    built: dict[str, Any] = {}
    for path in adapters.paths.values():
        if str(path) not in built:
            built[str(path)] = make_backend(preset_name, preset, path, serves=serves)
    return PhaseBackends(base, **{phase: built[str(path)] for phase, path in adapters.paths.items()})
