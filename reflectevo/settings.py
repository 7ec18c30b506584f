"""The registry of systems: the learning settings and the two prompt baselines, read once from
`reflectevo/resources/settings.yaml`.

That file is the only list of settings: dvc.yaml loads it as template vars (one `train@<setting>` stage
per entry), and the trainer, evaluation, self-evolution, the RL rewards, the model cards, the CLI and the
report ask this module. It imports nothing of the project but `errors`, so any module may use it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from reflectevo.errors import ReflectEvoError, unknown

FAMILIES = ("sft", "dpo", "rl")
DATA_KINDS = ("dplus", "dpm", "dpref", "sources", "raw")
EVALUATE_KINDS = ("one_stage", "reflect_retry", "answers_only")
PHASES = ("reflector", "corrector")     # generation phases an adapter can write (trial 1 stays the base's)


@dataclass(frozen=True)
class Setting:
    """One learning setting (an entry of `settings:` in settings.yaml)."""

    name: str
    family: str                       # sft | dpo | rl: which trainer
    method: str                       # the model card's method tag
    data: str                         # dplus | dpm | dpref | sources | raw
    train: str                        # the train@<setting> stage's inputs
    eval: str
    deps: str
    roles: tuple[str, ...]            # adapter roles, each a sub-folder of models/<setting>/
    evaluate: str                     # one_stage | reflect_retry | answers_only
    label: str
    what: str
    retry: str = ""                   # reflect_retry: a role, `base`, or `card` (the card's retry_by)
    phases: dict[str, str] = field(default_factory=dict)   # generation phase -> role (self-evolution)
    reward: str = ""                  # rl: one_stage | reflect_retry

    @property
    def reflects(self) -> bool:
        """Whether evaluation runs a reflect -> retry round for it (all but the answers-only baseline)."""
        return self.evaluate != "answers_only"

    @property
    def curated(self) -> str | None:
        """The data/curated config it trains on (dplus, dpm, dpref), or None."""
        return self.data if self.data in ("dplus", "dpm", "dpref") else None


@dataclass(frozen=True)
class Registry:
    baselines: dict[str, str]          # prompt baseline -> label
    settings: dict[str, Setting]


def _check(name: str, entry: Any) -> Setting:
    where = f"reflectevo/resources/settings.yaml: settings.{name}"
    if not isinstance(entry, dict):
        raise ReflectEvoError(f"{where}: expected a mapping")
    s = Setting(name=name, **{k: tuple(v) if k == "roles" else v for k, v in entry.items()})
    if s.family not in FAMILIES:
        raise unknown("family", s.family, FAMILIES, f"{where}.family")
    if s.data not in DATA_KINDS:
        raise unknown("data kind", s.data, DATA_KINDS, f"{where}.data")
    if s.evaluate not in EVALUATE_KINDS:
        raise unknown("evaluation kind", s.evaluate, EVALUATE_KINDS, f"{where}.evaluate")
    if s.evaluate == "reflect_retry" and s.retry not in (*s.roles, "base", "card"):
        raise ReflectEvoError(f"{where}.retry: a role of {list(s.roles)}, base or card")
    for phase, role in s.phases.items():
        if phase not in PHASES or role not in s.roles:
            raise ReflectEvoError(f"{where}.phases: {phase}: {role} (phases {PHASES}, roles {list(s.roles)})")
    if (s.family == "rl") != bool(s.reward):
        raise ReflectEvoError(f"{where}.reward: rl settings (only) name what the verifier judges")
    return s


@functools.lru_cache(maxsize=1)
def registry() -> Registry:
    from ruamel.yaml import YAML

    text = resources.files("reflectevo.resources").joinpath("settings.yaml").read_text(encoding="utf-8")
    data = YAML(typ="safe", pure=True).load(text)
    baselines = {name: str(entry["label"]) for name, entry in data["baselines"].items()}
    return Registry(baselines=baselines, settings={n: _check(n, e) for n, e in data["settings"].items()})


def setting(name: str, where: str = "setting") -> Setting:
    """The setting `name`, or one clear error with the valid names."""
    reg = registry().settings
    if name not in reg:
        raise unknown("training setting", name, reg, where)
    return reg[name]


def setting_names(family: str | None = None) -> tuple[str, ...]:
    """Every setting in file order (the report's and the headline's order), or those of one trainer family."""
    return tuple(n for n, s in registry().settings.items() if family is None or s.family == family)


def baseline_names() -> tuple[str, ...]:
    """The prompt baselines (no adapter): base_noreflect, base_reflect."""
    return tuple(registry().baselines)


def system_names() -> tuple[str, ...]:
    """Every system evaluation can run: the baselines, then the settings."""
    return (*baseline_names(), *setting_names())


def reflection_settings() -> tuple[str, ...]:
    """Settings whose adapters can write a new round's reflections (self-evolution)."""
    return tuple(n for n, s in registry().settings.items() if s.phases)


def label(system: str) -> str:
    """The report's row label of a system (the paper's Table 2 wording); unknown names stay as they are."""
    reg = registry()
    if system in reg.baselines:
        return reg.baselines[system]
    return reg.settings[system].label if system in reg.settings else system


def roles(name: str) -> tuple[str, ...]:
    return setting(name).roles


__all__ = ["FAMILIES", "PHASES", "Registry", "Setting", "baseline_names", "label", "reflection_settings", "registry",
           "roles", "setting", "setting_names", "system_names"]
