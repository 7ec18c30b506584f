"""The demand pool: the 32 instructions (ReflectEvo's V-E-P demands) a reflection is written under, one
per sample, from `reflectevo/resources/demands.yaml`."""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any


@functools.lru_cache(maxsize=1)
def _pool() -> dict[str, Any]:
    from ruamel.yaml import YAML

    text = resources.files("reflectevo.resources").joinpath("demands.yaml").read_text()
    return YAML(typ="safe", pure=True).load(text)


def demand_pool() -> dict[str, dict[str, str]]:
    """demand id -> {error_type, text}."""
    return dict(_pool()["demands"])
