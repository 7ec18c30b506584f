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
    """A setting folder's model_card.json; a missing, unreadable or malformed card raises one line naming it."""
    from reflectevo.jsonio import read_input_json

    card_path = Path(setting_dir) / "model_card.json"
    if not card_path.exists() and not card_path.is_symlink():
        raise ReflectEvoError(f"{setting_dir}: no model_card.json (not a trained setting folder, or its train stage or "
                              "a copy of it was interrupted; run its train stage)")
    card = read_input_json(card_path, "model card")
    if not isinstance(card, dict):
        raise ReflectEvoError(f"{card_path}: expected a JSON object, got {type(card).__name__}")
    return card


def untrained_reason(setting_dir: str | Path) -> str | None:
    """Why the setting folder holds no adapter ("no training data: D+ is empty"), or None when trained (its
    weights checked); a folder that is neither raises one line naming the file (`setting_status`)."""
    return setting_status(setting_dir)[1]


def generation_adapters(setting_dir: str | Path, preset_name: str | None = None) -> GenerationAdapters:
    """The phase adapters of the trained setting in `setting_dir` (e.g. models/one_stage)."""
    setting_dir = Path(setting_dir)
    card = read_card(setting_dir)
    setting = card.get("setting")
    if setting not in reflection_settings():
        raise ReflectEvoError(f"{setting_dir}: setting {setting!r} has no reflection adapter; generation takes one of "
                              f"{', '.join(reflection_settings())}")
    trained, why = setting_status(setting_dir, preset_name)   # card, weights and preset checked
    if trained is None:
        raise ReflectEvoError(f"{setting_dir}: the {setting} adapter was not trained ({why})")
    paths = {phase: setting_dir / card["adapters"][role] for phase, role in registry().settings[setting].phases.items()}
    return GenerationAdapters(setting=setting, source=str(setting_dir), paths=paths,
                              hashes={p: adapter_hash(x) for p, x in paths.items()})


# The only statuses of a setting's card that evaluation and self-evolution skip (with the card's reason):
# the train stage wrote each on purpose (`skipped`: a scripted preset, which has no weights to train).
SKIPPED_STATUSES = ("no training data", "disabled", "skipped")


def _safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file's framing (a truncated copy, another format), or None: the
    8-byte header length, the JSON header, and the data size the header promises against the file's."""
    from reflectevo.jsonio import open_input

    with open_input(path, "weights file") as fh:
        size = path.stat().st_size
        head = fh.read(8)
        if len(head) < 8:
            return f"{size} bytes: too short for a safetensors file (truncated?)"
        n = int.from_bytes(head, "little")
        if n > size - 8 or n > 100 << 20:
            return f"header length {n} beyond the file's {size} bytes (truncated or not safetensors)"
        try:
            header = json.loads(fh.read(n))
        except (ValueError, UnicodeDecodeError):
            return "malformed safetensors header (damaged?)"
    if not isinstance(header, dict):
        return "malformed safetensors header (damaged?)"
    ends = [v.get("data_offsets", [0, 0])[1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    want = 8 + n + max(ends, default=0)
    if not all(isinstance(e, int) for e in ends) or want != size:
        return f"{size} bytes, the header describes {want} (truncated or damaged)"
    return None


def check_weights_folder(path: str | Path, method: str = "lora") -> None:
    """Raise one ReflectEvoError naming the file when a trained folder cannot be loaded: its config
    (adapter_config.json for LoRA, config.json for a full model) missing or malformed, no weights, or
    a weights file cut short. Reads headers only (milliseconds)."""
    from reflectevo.jsonio import read_input_json

    path = Path(path)
    if not path.is_dir():
        raise ReflectEvoError(f"{path}: no such folder (the setting's card names it; an interrupted copy?)")
    config = path / ("adapter_config.json" if method == "lora" else "config.json")
    if not config.exists():
        raise ReflectEvoError(f"{config}: not found (an interrupted train or copy?)")
    data = read_input_json(config, "adapter config" if method == "lora" else "model config")
    if not isinstance(data, dict):
        raise ReflectEvoError(f"{config}: expected a JSON object, got {type(data).__name__}")
    pattern = "adapter_model.*" if method == "lora" else "*.safetensors"
    weights = sorted(p for p in path.glob(pattern) if p.suffix in (".safetensors", ".bin"))
    if method != "lora":
        weights += sorted(path.glob("pytorch_model*.bin"))
    if not weights:
        want = "adapter_model.safetensors" if method == "lora" else "model.safetensors"
        raise ReflectEvoError(f"{path}: no weights ({want}; an interrupted train or copy?)")
    for w in weights:
        problem = _safetensors_problem(w) if w.suffix == ".safetensors" else (
            "empty file" if w.stat().st_size == 0 else None)
        if problem:
            raise ReflectEvoError(f"{w}: {problem}")


def setting_status(setting_dir: str | Path, preset_name: str | None = None) -> tuple[dict[str, Any] | None, str | None]:
    """(card, None) for a trained setting folder whose weights can be loaded, or (None, reason) when its
    card says "no training data", "disabled" or "skipped". Anything else (no card, a damaged card or weights file,
    another status, weights of another preset) raises one ReflectEvoError naming the file."""
    setting_dir = Path(setting_dir)
    card = read_card(setting_dir)
    where = setting_dir / "model_card.json"
    status = card.get("status")
    if status in SKIPPED_STATUSES:
        return None, f"{status}: {card.get('reason') or ''}".rstrip(": ")
    if status != "trained":
        raise ReflectEvoError(f"{where}: status {status!r} is neither 'trained' nor one of {', '.join(SKIPPED_STATUSES)} "
                              "(an interrupted train? run its train stage again)")
    adapters, base = card.get("adapters"), card.get("base")
    if not isinstance(adapters, dict) or not adapters or not all(isinstance(v, str) for v in adapters.values()):
        raise ReflectEvoError(f"{where}: 'adapters' must map each role to its sub-folder")
    if not isinstance(base, dict) or not isinstance(base.get("preset"), str):
        raise ReflectEvoError(f"{where}: 'base.preset' (the preset it was trained on) is missing")
    setting = card.get("setting", setting_dir.name)
    spec = registry().settings.get(setting) if isinstance(setting, str) else None
    if spec is None:
        raise ReflectEvoError(f"{where}: unknown setting {setting!r}")
    missing = [r for r in spec.roles if r not in adapters]
    if missing:
        raise ReflectEvoError(f"{where}: no adapter for role {missing[0]!r} of {setting}")
    if preset_name is not None and base["preset"] != preset_name:
        raise ReflectEvoError(f"{where}: trained on preset {base['preset']!r}, not the params' model {preset_name!r} "
                              f"(train it again with this model, or use -S model={base['preset']})")
    check_card_weights(setting_dir, card, spec.roles)
    return card, None


def check_card_weights(setting_dir: str | Path, card: dict[str, Any], roles: Any = None) -> None:
    """`check_weights_folder` for each role's sub-folder the card names (`roles`: these only)."""
    adapters = card.get("adapters")
    if not isinstance(adapters, dict) or not all(isinstance(v, str) for v in adapters.values()):
        raise ReflectEvoError(f"{Path(setting_dir) / 'model_card.json'}: 'adapters' must map each role to its sub-folder")
    method = "full" if card.get("method") == "full" else "lora"
    for role in roles if roles is not None else adapters:
        check_weights_folder(Path(setting_dir) / adapters[role], method)


__all__ = ["SKIPPED_STATUSES", "GenerationAdapters", "adapter_hash", "check_card_weights", "check_weights_folder",
           "generation_adapters", "read_card", "served_name", "setting_status", "untrained_reason"]
