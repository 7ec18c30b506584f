"""Process roles under `accelerate launch` / torchrun (one process otherwise)."""

from __future__ import annotations

import os

# the variables accelerate reads for the process count (accelerate/utils/environment.py,
# `get_cpu_distributed_information`; accelerate/state.py: LOCAL_RANK set means a launcher started us)
_WORLD_SIZE = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def single_process(env: dict[str, str] | None = None) -> bool:
    """No launcher started several processes: then this one is the main process, known without importing
    accelerate (and torch with it: seconds a stage that trains nothing need not spend)."""
    env = os.environ if env is None else env
    if env.get("LOCAL_RANK", "-1") != "-1":
        return False
    try:
        return all(int(env.get(k) or 1) <= 1 for k in _WORLD_SIZE)
    except ValueError:
        return False


def is_main_process() -> bool:
    """True on the main process (always, outside `accelerate launch` / torchrun)."""
    if single_process():
        return True
    from accelerate import PartialState

    return PartialState().is_main_process


def _barrier() -> None:
    """Wait for every process (a no-op in one process): main-process file work is seen by all ranks after it."""
    from accelerate import PartialState

    PartialState().wait_for_everyone()
