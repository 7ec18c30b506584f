"""Shared plumbing for the thin stage scripts in stages/: params loading and error reporting."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from reflectevo.errors import ReflectEvoError, one_line
from reflectevo.progress import quiet_libraries

F = TypeVar("F", bound=Callable[..., Any])

quiet_libraries()   # before a stage imports transformers or datasets (reflectevo/progress.py says what and why)


def friendly_errors(fn: F) -> F:
    """Bad input -> one line on stderr and exit status 2 (no traceback, nothing half-written).

    Besides ReflectEvoError, an OSError about a named file (a folder where a file is expected, a file
    that cannot be read or written, a full disk) is reported the same way, naming the file."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ReflectEvoError as e:
            print(f"error: {one_line(str(e))}", file=sys.stderr)
            raise SystemExit(2) from None
        except OSError as e:
            if e.filename is None:
                raise
            print(f"error: {e.filename}: {e.strerror or e}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper  # type: ignore[return-value]
