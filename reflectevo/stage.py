"""Shared plumbing for the thin stage scripts in stages/: params loading and error reporting."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from reflectevo.errors import ReflectEvoError
from reflectevo.progress import quiet_libraries

F = TypeVar("F", bound=Callable[..., Any])

quiet_libraries()   # before a stage imports transformers or datasets (reflectevo/progress.py says what and why)


def friendly_errors(fn: F) -> F:
    """Bad input -> one line on stderr and exit status 2 (no traceback, nothing half-written)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ReflectEvoError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper  # type: ignore[return-value]


def stage_params(params_file: Path, section: str, with_model: bool = True):
    """(preset name, preset, section config) for a stage, all validated."""
    from reflectevo.config import load_preset, load_section, read_params

    params = read_params(params_file)
    cfg = load_section(params, section)
    if not with_model:
        return None, None, cfg
    name, preset = load_preset(params)
    return name, preset, cfg
