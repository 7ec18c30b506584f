"""Process roles under `accelerate launch` / torchrun (one process otherwise)."""

from __future__ import annotations


def is_main_process() -> bool:
    """True on the main process (always, outside `accelerate launch` / torchrun)."""
    from accelerate import PartialState

    return PartialState().is_main_process


def _barrier() -> None:
    """Wait for every process (a no-op in one process): main-process file work is seen by all ranks after it."""
    from accelerate import PartialState

    PartialState().wait_for_everyone()
