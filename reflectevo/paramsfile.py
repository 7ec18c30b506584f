"""The whole params file: every section by name, the train section included (its class lives beside the
trainers, which `reflectevo.config` does not import), and `validate_all`, behind `reflectevo params check`."""

from __future__ import annotations

from typing import Any

from reflectevo.config.params import OPTIONAL_SECTIONS, SECTION_NAMES, load_section
from reflectevo.config.params import SECTIONS as STAGE_SECTIONS
from reflectevo.config.presets import load_preset
from reflectevo.training.config import TrainConfig

SECTIONS: dict[str, type] = {name: TrainConfig if name == "train" else STAGE_SECTIONS[name] for name in SECTION_NAMES}


def validate_all(params: dict[str, Any]) -> None:
    """Validate every preset and section, and the presets the sections name; the first problem is raised as
    one ReflectEvoError line naming its key."""
    from reflectevo.judge import JUDGES

    load_preset(params)  # first: the `models:` map itself, and the `model:` selector (an old name: "did you mean")
    for name in params["models"]:
        load_preset(params, name)
    for name, cls in SECTIONS.items():
        if name in OPTIONAL_SECTIONS and name not in params:
            continue
        cfg = load_section(params, name, cls)
        if name == "curate" and cfg.judge not in ("none", *JUDGES):
            load_preset(params, cfg.judge, where="curate.judge")
