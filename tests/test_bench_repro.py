"""bench/bench_repro.py's parts that need no pipeline run: params edits and the split of a run's wall time at
DVC's stage lines."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_repro", ROOT / "bench/bench_repro.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_set_param_edits_nested_keys_and_list_items(bench):
    p = {"model": "a", "prepare": {"tasks": [{"n_train": 48}]}}
    bench.set_param(p, "prepare.tasks.0.n_train=8")
    bench.set_param(p, "model=tiny-random")
    bench.set_param(p, "train.sft.max_steps=1")
    assert p == {"model": "tiny-random", "prepare": {"tasks": [{"n_train": 8}]}, "train": {"sft": {"max_steps": 1}}}


def test_the_wall_time_is_split_at_each_running_stage_line(bench, tmp_path):
    script = ("import time\nprint('Reproducing')\ntime.sleep(0.2)\nprint(\"Running stage 'prepare':\")\ntime.sleep(0.3)\n"
              "print(\"Running stage 'train@one_stage':\")\ntime.sleep(0.5)\nprint('done')\n")
    res = bench.timed_run([sys.executable, "-u", "-c", script], tmp_path, {"PATH": "/usr/bin:/bin"}, tmp_path / "log")
    assert res["rc"] == 0 and list(res["stages"]) == ["prepare", "train@one_stage"]
    assert 0.25 <= res["stages"]["prepare"] < 0.5 and 0.45 <= res["stages"]["train@one_stage"] < 0.9
    assert abs(res["before_first_stage"] + sum(res["stages"].values()) - res["seconds"]) < 0.15
    assert "Running stage 'prepare'" in (tmp_path / "log").read_text()


def test_compare_lists_every_stage_of_both_runs(bench):
    v = {"old": {"install_s": 10.0, "total_s": 40.0, "repro": {"stages": {"a": 10.0, "b": 20.0}}},
         "new": {"install_s": 8.0, "total_s": 20.0, "repro": {"stages": {"a": 4.0, "c": 8.0}}}}
    rows = bench.compare(v)
    assert rows["b"] == {"old": 20.0, "new": None} and rows["c"] == {"old": None, "new": 8.0}
    assert rows["install"] == {"old": 10.0, "new": 8.0} and rows["total"] == {"old": 40.0, "new": 20.0}
