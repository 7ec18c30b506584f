"""params.yaml access: `read_params` (YAML 1.2, so `-S x=1e-05` stays a float) and `load_section`, which
validates one stage section, every key required so DVC tracks every value.

The train section's class lives beside the trainers (`reflectevo.training.config.TrainConfig`): the train
stage passes it, `load_section(params, "train", TrainConfig)`. `reflectevo.paramsfile` knows every section."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from reflectevo.config.loader import from_dict
from reflectevo.config.sections import (CurateConfig, DemoConfig, EvaluateConfig, EvolveConfig,
                                        GenerateConfig, PrepareConfig)
from reflectevo.errors import ReflectEvoError, did_you_mean, unknown

T = TypeVar("T")

SECTION_NAMES = ("prepare", "generate", "curate", "train", "evaluate", "evolve", "demo")   # params.yaml's order
SECTIONS: dict[str, type] = {   # the sections this package holds the class of (all but train)
    "prepare": PrepareConfig,
    "generate": GenerateConfig,
    "curate": CurateConfig,
    "evaluate": EvaluateConfig,
    "evolve": EvolveConfig,
    "demo": DemoConfig,
}
OPTIONAL_SECTIONS = ("evolve", "demo")                 # params files written before it need not have it
TOP_LEVEL = ("model", "models", "launcher", *SECTION_NAMES)   # launcher: the train stages' command (dvc.yaml)


def read_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    from ruamel.yaml import YAML

    path = Path(path)
    if not path.exists():
        raise ReflectEvoError(f"{path}: params file not found")
    if not path.is_file():
        raise ReflectEvoError(f"{path}: not a file")
    try:
        data = YAML(typ="safe", pure=True).load(path.read_text())
    except Exception as e:  # noqa: BLE001 (ruamel's errors carry the line in problem_mark)
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ReflectEvoError(f"{path}{line}: invalid YAML ({' '.join(str(problem).split())})") from None
    if not isinstance(data, dict):
        raise ReflectEvoError(f"{path}: expected a mapping at the top level")
    for key in data:
        if key not in TOP_LEVEL:
            raise ReflectEvoError(
                f"{path}: unknown top-level key {key!r}.{did_you_mean(key, TOP_LEVEL)} Valid: {', '.join(TOP_LEVEL)}"
            )
    return data


def load_section(params: dict[str, Any], section: str, cls: type[T] | None = None) -> T:
    """The validated `section` of `params`; `cls` is needed for a section whose class lives elsewhere (train)."""
    if section not in SECTION_NAMES:
        raise unknown("params section", section, SECTION_NAMES)
    if cls is None:
        if section not in SECTIONS:
            raise TypeError(f"load_section: pass the {section!r} section's class (it lives beside its code)")
        cls = SECTIONS[section]  # type: ignore[assignment]
    if section not in params:
        raise ReflectEvoError(f"{section}: section missing from params.yaml")
    return from_dict(cls, params[section], section, require_all=True)  # type: ignore[arg-type]


def stage_params(params_file: str | Path, section: str, with_model: bool = True, cls: type | None = None):
    """(preset name, preset, section config) for a stage, all validated before the stage reads anything else;
    `with_model=False`: (None, None, config). `cls`: the section's class when `reflectevo.config` does not
    know it (the train section: `reflectevo.training.config.TrainConfig`)."""
    from reflectevo.config.presets import load_preset

    params = read_params(params_file)
    cfg = load_section(params, section, cls)
    if not with_model:
        return None, None, cfg
    name, preset = load_preset(params)
    return name, preset, cfg
