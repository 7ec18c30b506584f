"""Trained adapters as generation inputs: which adapter writes which phase, and their content hashes.

A trained setting's folder (`models/<setting>/`, written by the train stage) holds a `model_card.json`
naming its adapter sub-folders per role. Generation with a setting's adapters (self-evolution)
uses them per phase, as evaluation does:

| setting           | trial 1 | reflection           | retry (trial 2)  |
|-------------------|---------|----------------------|------------------|
| one_stage         | base    | the one-stage adapter | the one-stage adapter |
| two_stage         | base    | reflector            | corrector        |
| dpo_pm, dpo_pref  | base    | the DPO reflector    | base             |

(The one-stage adapter writes reflection and answer in one output at evaluation; in an episode its
reflection and its retry are two calls with the episode prompts, so curation gets the usual fields.)

An adapter is identified by the hash of its weights and config (`adapter_hash`), never its path: the
episode key holds it, so episodes written with different adapters (iterations) never share a key.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reflectevo.errors import ReflectEvoError
from reflectevo.settings import reflection_settings, registry


_CONTENT = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


def adapter_hash(path: str | Path) -> str:
    """sha256 (first 16 hex digits) of an adapter folder's config and weights, by content."""
    path = Path(path)
    files = [path / n for n in _CONTENT if (path / n).exists()]
    if not any(f.name != "adapter_config.json" for f in files):
        raise ReflectEvoError(f"{path}: not a LoRA adapter folder (no adapter_model.safetensors)")
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0")
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def served_name(preset_name: str, path: str | Path) -> str:
    """The model name an OpenAI-compatible server serves an adapter under (`reflectevo serve --adapter`
    uses it by default; with `vllm serve --enable-lora --lora-modules NAME=PATH` pass this NAME)."""
    return f"{preset_name}-lora-{adapter_hash(path)[:12]}"


@dataclass(frozen=True)
class GenerationAdapters:
    """The adapters of one trained setting, per generation phase (`reflector`, `corrector`)."""

    setting: str
    source: str                                   # the setting folder, as given
    paths: dict[str, Path] = field(default_factory=dict)
    hashes: dict[str, str] = field(default_factory=dict)

    def key(self) -> dict[str, Any]:
        """What goes into the episode key and record: the setting and each phase's adapter hash."""
        return {"setting": self.setting, **self.hashes}

    def record(self) -> dict[str, Any]:
        return {"setting": self.setting, "source": self.source,
                "phases": {p: {"path": str(self.paths[p]), "hash": self.hashes[p]} for p in self.paths}}


def read_card(setting_dir: str | Path) -> dict[str, Any]:
    card_path = Path(setting_dir) / "model_card.json"
    if not card_path.exists():
        raise ReflectEvoError(f"{setting_dir}: no model_card.json (not a trained setting folder; run its train stage)")
    try:
        return json.loads(card_path.read_text())
    except ValueError as e:
        raise ReflectEvoError(f"{card_path}: invalid JSON ({e})") from None


def untrained_reason(setting_dir: str | Path) -> str | None:
    """Why the setting folder holds no adapter ("no training data: D+ is empty"), or None when trained."""
    card = read_card(setting_dir)
    if card.get("status") == "trained":
        return None
    return f"{card.get('status', 'not trained')}: {card.get('reason', '')}".rstrip(": ")


def generation_adapters(setting_dir: str | Path, preset_name: str | None = None) -> GenerationAdapters:
    """The phase adapters of the trained setting in `setting_dir` (e.g. models/one_stage)."""
    setting_dir = Path(setting_dir)
    card = read_card(setting_dir)
    setting = card.get("setting")
    if setting not in reflection_settings():
        raise ReflectEvoError(f"{setting_dir}: setting {setting!r} has no reflection adapter; generation takes one of "
                              f"{', '.join(reflection_settings())}")
    why = untrained_reason(setting_dir)
    if why is not None:
        raise ReflectEvoError(f"{setting_dir}: the {setting} adapter was not trained ({why})")
    if preset_name is not None and card.get("base", {}).get("preset") != preset_name:
        raise ReflectEvoError(f"{setting_dir}: adapter trained on preset {card.get('base', {}).get('preset')!r}, "
                              f"not the params' model {preset_name!r}")
    paths = {phase: setting_dir / card["adapters"][role] for phase, role in registry().settings[setting].phases.items()}
    return GenerationAdapters(setting=setting, source=str(setting_dir), paths=paths,
                              hashes={p: adapter_hash(x) for p, x in paths.items()})


class PhaseBackends:
    """One backend per generation phase: trial 1 (`trial`, the base), `reflector`, `corrector` (the retry).
    Phases without an adapter share the base backend; two phases with the same adapter share one."""

    def __init__(self, trial: Any, reflector: Any = None, corrector: Any = None) -> None:
        self.trial = trial
        self.reflector = reflector if reflector is not None else trial
        self.corrector = corrector if corrector is not None else trial

    def distinct(self) -> list[Any]:
        out: list[Any] = []
        for b in (self.trial, self.reflector, self.corrector):
            if all(b is not o for o in out):
                out.append(b)
        return out

    @property
    def prefilled_tokens(self) -> int:
        return sum(getattr(b, "prefilled_tokens", 0) or 0 for b in self.distinct())

    @property
    def dtype(self) -> Any:
        return getattr(self.trial, "dtype", None)


def build_phase_backends(preset_name: str, preset: Any, adapters: GenerationAdapters | None) -> Any:
    """The base backend, or with `adapters` a `PhaseBackends` (every backend names all adapter paths, so
    vLLM starts one engine for the base and its LoRAs; an openai backend asks the server for each
    adapter by `served_name`)."""
    from reflectevo.backends import make_backend

    if adapters is None:
        return make_backend(preset_name, preset)
    serves = sorted({str(p) for p in adapters.paths.values()})
    base = make_backend(preset_name, preset, serves=serves)
    built: dict[str, Any] = {}
    for path in adapters.paths.values():
        if str(path) not in built:
            built[str(path)] = make_backend(preset_name, preset, path, serves=serves)
    return PhaseBackends(base, **{phase: built[str(path)] for phase, path in adapters.paths.items()})


__all__ = ["GenerationAdapters", "PhaseBackends", "adapter_hash",
           "build_phase_backends", "generation_adapters", "read_card", "served_name", "untrained_reason"]
