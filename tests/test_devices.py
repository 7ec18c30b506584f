"""Generate workers get the parent's own GPUs (its CUDA_VISIBLE_DEVICES entries), never a guessed index;
a vllm preset never puts two engines on one GPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reflectevo.generation.devices import visible_gpus, worker_devices
from reflectevo.errors import ReflectEvoError

ROOT = Path(__file__).resolve().parents[1]


def test_workers_split_the_parents_gpu_list():
    assert worker_devices(2, "2,3", 2) == ["2", "3"]
    assert worker_devices(2, None, 2) == ["0", "1"]
    uuids = "GPU-8f2c1a,GPU-77d0e4"
    assert worker_devices(2, uuids, 2) == ["GPU-8f2c1a", "GPU-77d0e4"]
    assert worker_devices(1, "MIG-4b1e", 1) == ["MIG-4b1e"]
    assert worker_devices(3, "5, 6", 2) == ["5", "6", "5"]            # transformers: round-robin on the GPUs
    assert worker_devices(2, "", 0) is None and worker_devices(2, None, 0) is None   # no GPU: CPU workers
    assert visible_gpus("1,7,9", 2) == ["1", "7"]                      # what torch sees (CUDA stops at a bad entry)


def test_more_vllm_workers_than_gpus_is_refused():
    assert worker_devices(2, "2,3", 2, backend="vllm") == ["2", "3"]
    with pytest.raises(ReflectEvoError, match=r"generate\.workers: 3 workers but 2 visible GPU\(s\) \(2,3\); with backend "
                                              r"vllm each worker needs a GPU of its own.*generate\.workers <= 2"):
        worker_devices(3, "2,3", 2, backend="vllm")


class _Proc:
    def wait(self):
        return 0


def test_the_generate_stage_gives_each_worker_one_of_its_gpus(tmp_path, monkeypatch):
    import reflectevo.generation.stage as mod

    seen = []

    def popen(cmd, env):   # subprocess.Popen(args, env=...) as run_workers calls it
        shard = cmd[cmd.index("--shard") + 1]
        i, n = shard.split("/")
        (tmp_path / f".cost-{i}-of-{n}.json").write_text(json.dumps({"computed": 1}))
        seen.append((shard, env["CUDA_VISIBLE_DEVICES"]))
        return _Proc()

    monkeypatch.setattr(mod.subprocess, "Popen", popen)
    monkeypatch.setattr(mod, "_gpu_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert mod.run_workers(2, ROOT / "stages" / "generate.py", [], tmp_path, backend="vllm") == {"computed": 2}
    assert seen == [("0/2", "2"), ("1/2", "3")]
    with pytest.raises(ReflectEvoError, match="with backend vllm each worker needs a GPU"):
        mod.run_workers(3, ROOT / "stages" / "generate.py", [], tmp_path, backend="vllm")
    assert len(seen) == 2                                              # refused before any worker started
