"""Process roles under `accelerate launch` / torchrun (one process otherwise), and the one-GPU rule for a
process started without a launcher on a machine with several GPUs."""

from __future__ import annotations

import os
import sys


def _state():
    """accelerate's process state, created as the trainers create it: on a machine without CUDA with
    `cpu=True`. Its state is shared by the whole process and its first creation decides it, and a
    `PartialState()` made first without `cpu` on a CPU-only machine sees no process group under a
    multi-process launcher (accelerate/state.py `_prepare_backend`: MULTI_CPU only with `cpu`), so every rank
    would call itself the main process until a trainer's arguments reset it."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())

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
    return _state().is_main_process


def num_processes() -> int:
    """How many processes train together (1 outside a launcher)."""
    return _state().num_processes


def _barrier() -> None:
    """Wait for every process (a no-op in one process): main-process file work is seen by all ranks after it."""
    _state().wait_for_everyone()


LAUNCHER_HINT = "dvc exp run -S 'launcher=accelerate launch --multi_gpu --num_processes {n}'"


def one_gpu_without_launcher(env: dict[str, str] | None = None, out=None) -> str | None:
    """A process started without a launcher (no LOCAL_RANK) that sees several GPUs trains on the first one.

    transformers gives such a process `n_gpu = torch.cuda.device_count()` (training_args.py `_setup_devices`)
    and every TRL trainer then refuses to start ("does not support `nn.DataParallel`", e.g.
    trl/trainer/sft_trainer.py). So `CUDA_VISIBLE_DEVICES` is narrowed to the first visible GPU before CUDA
    starts, and one line says so and names the launcher that uses them all. Returns that GPU's id (None when
    nothing changed). If CUDA already started in this process (visibility can no longer change), one error
    line names the launcher instead."""
    env = os.environ if env is None else env
    if env.get("LOCAL_RANK") is not None:
        return None
    import torch

    count = torch.cuda.device_count()
    if count <= 1:
        return None
    from reflectevo.errors import ReflectEvoError

    # the first of the parent's own GPU ids (indices, GPU-<uuid> or MIG-<uuid>), as CUDA numbers them
    listed = [e.strip() for e in (env.get("CUDA_VISIBLE_DEVICES") or "").split(",") if e.strip()]
    first = listed[0] if env.get("CUDA_VISIBLE_DEVICES") is not None and listed else "0"
    hint = LAUNCHER_HINT.format(n=count)
    if torch.cuda.is_initialized():
        raise ReflectEvoError(f"{count} GPUs visible to one training process without a launcher (TRL trains on one "
                              f"GPU per process): run it under a launcher, {hint}, or set CUDA_VISIBLE_DEVICES to one GPU")
    env["CUDA_VISIBLE_DEVICES"] = first
    print(f"train: {count} GPUs visible but no launcher: training on GPU {first} only; to use all {count}: {hint}",
          file=out or sys.stderr)
    return first
