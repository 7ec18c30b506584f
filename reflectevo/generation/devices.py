"""Which GPU each generate worker process sees.

A worker gets one entry of the parent's own GPU list: the parent's `CUDA_VISIBLE_DEVICES` entries as
written (indices, `GPU-<uuid>` or `MIG-<uuid>` ids), or 0..n-1 when it is unset. With `2,3` visible, two
workers see physical GPUs 2 and 3, never 0 and 1. More workers than GPUs share them round-robin, except
with backend vllm: a vLLM engine takes most of its GPU's memory at start-up, so a second one on the same
GPU fails; that is refused before any worker starts.
"""

from __future__ import annotations

from reflectevo.errors import ReflectEvoError


def visible_gpus(cuda_visible_devices: str | None, device_count: int) -> list[str]:
    """The parent's GPUs as CUDA ids: its `CUDA_VISIBLE_DEVICES` entries, else "0".."n-1".

    CUDA ignores the entries after an invalid one, so the list is cut to the `device_count` torch sees."""
    if device_count <= 0:
        return []
    if cuda_visible_devices is None:
        return [str(i) for i in range(device_count)]
    entries = [e.strip() for e in cuda_visible_devices.split(",") if e.strip()]
    return entries[:device_count]


def worker_devices(workers: int, cuda_visible_devices: str | None, device_count: int,
                   backend: str = "transformers") -> list[str] | None:
    """`CUDA_VISIBLE_DEVICES` for each of `workers` processes, or None where there is no GPU."""
    gpus = visible_gpus(cuda_visible_devices, device_count)
    if not gpus:
        return None
    if workers > len(gpus) and backend == "vllm":
        raise ReflectEvoError(
            f"generate.workers: {workers} workers but {len(gpus)} visible GPU(s) ({','.join(gpus)}); with backend "
            f"vllm each worker needs a GPU of its own (a second engine does not fit): set generate.workers <= {len(gpus)}")
    return [gpus[i % len(gpus)] for i in range(workers)]
