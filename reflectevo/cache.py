"""The user cache (`$REFLECTEVO_CACHE`, default ~/.cache/reflectevo): converted and built models, task
metadata. Folders are built once under a file lock and appear complete or not at all."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def cache_root() -> Path:
    """$REFLECTEVO_CACHE, else ~/.cache/reflectevo."""
    return Path(os.environ.get("REFLECTEVO_CACHE", Path.home() / ".cache" / "reflectevo"))


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `<path>.lock` while the block runs (other processes wait)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path) + ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_once(target: Path, build) -> Path:
    """Build `target` with `build(tmpdir)` unless it is already complete (marker file)."""
    if (target / ".complete").exists():
        return target
    with locked(target):
        if (target / ".complete").exists():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
        try:
            build(tmp)
            (tmp / ".complete").write_text("ok\n")
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
