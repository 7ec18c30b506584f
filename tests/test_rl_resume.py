"""A GRPO run killed with `kill -9` resumes from its newest checkpoint, as the SFT settings do (a real
SIGKILL of stages/train.py, then the same command again)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from helpers import tiny_params_dict
from test_rl_training import episodes
from test_training_resume import _losses

from reflectevo.training.checkpoint import latest_checkpoint

ROOT = Path(__file__).resolve().parents[1]
STEPS, SAVE_EVERY = 4, 2

# stages/train.py as `python stages/train.py ...` runs it, with each optimizer step sleeping SLOW_STEP seconds
DRIVER = """
import os, runpy, sys, time
import reflectevo.training.run as T

slow = float(os.environ.get("SLOW_STEP", "0"))
_orig = T.step_logger

def step_logger(live, prefix):
    cb = _orig(live, prefix)
    if slow:
        cb.on_step_end = lambda args, state, control, **kw: time.sleep(slow)
    return cb

T.step_logger = step_logger
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path(os.path.join(os.environ["REFLECTEVO_ROOT"], "stages", "train.py"), run_name="__main__")
"""


def test_a_killed_grpo_run_resumes_from_its_checkpoint(tmp_path):
    from reflectevo.generation.run import write_shards

    p = tiny_params_dict(ROOT / "params.yaml")
    p["train"]["rl"].update(enabled=True, max_steps=STEPS, save_steps=SAVE_EVERY, batch_size=4, num_generations=4,
                            max_completion_length=6, lr=5e-2)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(p, sort_keys=False))
    raw = tmp_path / "raw"
    raw.mkdir()
    write_shards(raw, list(episodes(6).values()), 50)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    out, ckpts, curves = tmp_path / "models/grpo_one_stage", tmp_path / "checkpoints/grpo_one_stage", tmp_path / "curves"
    cmd = [sys.executable, str(driver), "--setting", "grpo_one_stage", "--params", str(params), "--train-data", str(raw),
           "--out", str(out), "--metrics", str(tmp_path / "metrics.json"), "--curves", str(curves),
           "--checkpoints", str(ckpts)]
    env = {**os.environ, "REFLECTEVO_ROOT": str(ROOT), "SLOW_STEP": "0.5", "PYTHONPATH": str(ROOT),
           "OMP_NUM_THREADS": "1"}

    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        found = []
        while time.monotonic() < deadline and proc.poll() is None:
            found = [c for d in ckpts.glob("one_stage-*") if (c := latest_checkpoint(d))]
            if found:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before it could be killed:\n{proc.stderr.read().decode()[-3000:]}"
        assert found, "no checkpoint appeared in 120 s"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "model_card.json").exists() and not (tmp_path / "metrics.json").exists()

    env["SLOW_STEP"] = "0"
    done = subprocess.run(cmd, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    res = json.loads((tmp_path / "metrics.json").read_text())["one_stage"]
    card = json.loads((out / "model_card.json").read_text())
    assert res["steps"] == STEPS and 0 < res["resumed_from_step"] < STEPS and res["resumed_from_step"] % SAVE_EVERY == 0
    assert card["status"] == "trained" and card["resumed_from_step"] == {"one_stage": res["resumed_from_step"]}
    assert (out / "adapter_model.safetensors").exists() and not ckpts.exists()
    # the curves hold every global step once: the killed run's steps replayed from the checkpoint, then the rest
    assert [s for s, _ in _losses(curves / "plots/metrics/one_stage/reward.tsv")] == list(range(1, STEPS + 1))
