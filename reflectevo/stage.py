"""Shared plumbing for the thin stage scripts in stages/: params loading and error reporting."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from reflectevo.errors import ReflectEvoError

F = TypeVar("F", bound=Callable[..., Any])

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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
