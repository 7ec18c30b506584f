"""Resumable training: a real `kill -9` of the train stage, then a rerun that resumes (synthetic tiny-random
model, junk output); a checkpoint made for other data/params is never resumed; partial checkpoints are skipped."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import tiny_params_dict
from test_training import CFG, HP, _fp, dplus_rows, one_thread  # noqa: F401 - one_thread: autouse fixture

from reflectevo.training.checkpoint import latest_checkpoint

from reflectevo.training.run import train_setting

ROOT = Path(__file__).resolve().parents[1]

# Runs stages/train.py as `python stages/train.py ...` would, with one test-only change: each optimizer step
# of the `corrector` role sleeps SLOW_STEP seconds, so the test can kill the process mid-role reliably.
DRIVER = """
import os, runpy, sys, time
import reflectevo.training.run as T

slow = float(os.environ.get("SLOW_STEP", "0"))
_orig = T.step_logger

def step_logger(live, prefix):
    cb = _orig(live, prefix)
    if slow and prefix == "corrector":
        cb.on_step_end = lambda args, state, control, **kw: time.sleep(slow)
    return cb

T.step_logger = step_logger
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path(os.path.join(os.environ["REFLECTEVO_ROOT"], "stages", "train.py"), run_name="__main__")
"""

STEPS, SAVE_EVERY = 4, 2


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _losses(tsv: Path) -> list[tuple[int, float]]:
    return [(int(r["step"]), float(r[next(k for k in r if k != "step")]))
            for r in csv.DictReader(tsv.open(), delimiter="\t")]


def test_a_killed_two_stage_run_resumes_each_role(tmp_path):
    p = tiny_params_dict(ROOT / "params.yaml", steps=STEPS)
    p["train"]["sft"].update(save_steps=SAVE_EVERY, save_total_limit=2)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(p, sort_keys=False))
    train = _write_jsonl(tmp_path / "train.jsonl", dplus_rows(6))
    evalf = _write_jsonl(tmp_path / "eval.jsonl", dplus_rows(2))
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    out, ckpts, curves = tmp_path / "models/two_stage", tmp_path / "checkpoints/two_stage", tmp_path / "curves"
    cmd = [sys.executable, str(driver), "--setting", "two_stage", "--params", str(params), "--train-data", str(train),
           "--eval-data", str(evalf), "--out", str(out), "--metrics", str(tmp_path / "metrics.json"),
           "--curves", str(curves), "--checkpoints", str(ckpts)]
    env = {**os.environ, "REFLECTEVO_ROOT": str(ROOT), "SLOW_STEP": "0.5", "PYTHONPATH": str(ROOT),
           "OMP_NUM_THREADS": "1"}

    # 1. run, and kill -9 once the corrector has a complete checkpoint (the reflector has finished by then)
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            found = [c for d in ckpts.glob("corrector-*") if (c := latest_checkpoint(d))]
            if found:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before it could be killed:\n{proc.stderr.read().decode()[-3000:]}"
        assert found, "no corrector checkpoint appeared in 120 s"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "model_card.json").exists() and not (tmp_path / "metrics.json").exists()
    assert any((d / "final" / "result.json").exists() for d in ckpts.glob("reflector-*"))  # reflector finished

    # 2. rerun the same command: the reflector is reused, the corrector resumes from its checkpoint
    env["SLOW_STEP"] = "0"
    done = subprocess.run(cmd, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    res = json.loads((tmp_path / "metrics.json").read_text())
    card = json.loads((out / "model_card.json").read_text())
    assert res["reflector"]["reused"] is True and res["reflector"]["resumed_from_step"] == STEPS
    resumed = res["corrector"]["resumed_from_step"]
    assert resumed > 0 and resumed % SAVE_EVERY == 0 and resumed < STEPS
    assert card["resumed_from_step"] == {"reflector": STEPS, "corrector": resumed}
    assert card["status"] == "trained" and card["vllm_lora_compatible"] is True
    assert not ckpts.exists()  # removed after success (train.keep_checkpoints: false)

    # 3. the same as one uninterrupted run: global steps, loss history, final adapters
    from reflectevo.config.params import stage_params
    from reflectevo.training.config import TrainConfig

    name, preset, cfg = stage_params(params, "train", cls=TrainConfig)
    ref = train_setting("two_stage", name, preset, _fp(preset), dplus_rows(6), dplus_rows(2), cfg, tmp_path / "ref",
                        curves_dir=tmp_path / "ref_curves")
    import torch
    from safetensors.torch import load_file

    for role in ("reflector", "corrector"):
        assert res[role]["steps"] == ref[role]["steps"] == STEPS
        for k in ("first_loss", "last_loss", "train_loss", "eval_loss"):
            assert res[role][k] == pytest.approx(ref[role][k], rel=1e-3, abs=1e-3), (role, k)
        got = _losses(curves / f"plots/metrics/{role}/loss.tsv")
        want = _losses(tmp_path / f"ref_curves/plots/metrics/{role}/loss.tsv")
        assert [s for s, _ in got] == list(range(1, STEPS + 1))  # every global step once: the history continues
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-3, abs=1e-3)
        a, b = load_file(out / role / "adapter_model.safetensors"), load_file(tmp_path / "ref" / role / "adapter_model.safetensors")
        assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def _crash_after(monkeypatch, role: str, step: int):
    """Make `train_setting` raise inside `role`'s training right after optimizer step `step` (before it is saved)."""
    import reflectevo.training.run as T

    orig = T.step_logger

    def step_logger(live, prefix):
        cb = orig(live, prefix)
        if prefix == role:
            def on_step_end(args, state, control, **kw):
                if state.global_step == step:
                    raise KeyboardInterrupt("simulated kill")
            cb.on_step_end = on_step_end
        return cb

    monkeypatch.setattr(T, "step_logger", step_logger)


def test_a_checkpoint_for_other_params_is_never_resumed(tiny_preset, tmp_path, monkeypatch):
    hp = dataclasses.replace(HP, max_steps=4, save_steps=1)
    cfg = dataclasses.replace(CFG, sft=hp)
    ckpts = tmp_path / "checkpoints"
    with monkeypatch.context() as m:
        _crash_after(m, "one_stage", 3)
        with pytest.raises(KeyboardInterrupt):
            train_setting("one_stage", "tiny-random", tiny_preset, _fp(tiny_preset), dplus_rows(4), [], cfg,
                          tmp_path / "m", checkpoint_dir=ckpts)
    (stale,) = ckpts.glob("one_stage-*")
    assert latest_checkpoint(stale)[1] == 2 and json.loads((stale / "key.json").read_text())["seed"] == 0

    other = dataclasses.replace(cfg, seed=1)  # other params -> other key: starts from step 0
    res = train_setting("one_stage", "tiny-random", tiny_preset, _fp(tiny_preset), dplus_rows(4), [], other,
                        tmp_path / "m", checkpoint_dir=ckpts)
    assert res["one_stage"]["resumed_from_step"] == 0 and res["one_stage"]["steps"] == 4
    assert not ckpts.exists()  # success removes this setting's checkpoints, the stale key's too

    with monkeypatch.context() as m:  # other data -> other key as well
        _crash_after(m, "one_stage", 3)
        with pytest.raises(KeyboardInterrupt):
            train_setting("one_stage", "tiny-random", tiny_preset, _fp(tiny_preset), dplus_rows(4), [], cfg,
                          tmp_path / "m", checkpoint_dir=ckpts)
    res = train_setting("one_stage", "tiny-random", tiny_preset, _fp(tiny_preset), dplus_rows(5), [], cfg,
                        tmp_path / "m", checkpoint_dir=ckpts)
    assert res["one_stage"]["resumed_from_step"] == 0
    with monkeypatch.context() as m:  # and the same data + params resume
        _crash_after(m, "one_stage", 3)
        with pytest.raises(KeyboardInterrupt):
            train_setting("one_stage", "tiny-random", tiny_preset, _fp(tiny_preset), dplus_rows(4), [], cfg,
                          tmp_path / "m", checkpoint_dir=ckpts)
    keep = dataclasses.replace(cfg, keep_checkpoints=True, sft=dataclasses.replace(hp, save_total_limit=5))
    res = train_setting("one_stage", "tiny-random", tiny_preset, _fp(tiny_preset), dplus_rows(4), [], keep,
                        tmp_path / "m", checkpoint_dir=ckpts)  # save_total_limit does not change the key
    assert res["one_stage"]["resumed_from_step"] == 2
    assert json.loads((tmp_path / "m/model_card.json").read_text())["resumed_from_step"] == {"one_stage": 2}
    assert list(ckpts.glob("one_stage-*/final/adapter_model.safetensors"))  # kept: keep_checkpoints


def test_latest_checkpoint_skips_half_written_ones(tmp_path):
    def ckpt(step, state: str | None):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        if state is not None:
            (d / "trainer_state.json").write_text(state)

    assert latest_checkpoint(tmp_path / "missing") is None
    ckpt(2, json.dumps({"global_step": 2}))
    ckpt(4, json.dumps({"global_step": 4}))
    ckpt(6, None)                                 # killed before the state was written
    ckpt(8, '{"global_step": 8, "log_hist')       # killed while writing it
    ckpt(10, json.dumps({"global_step": 9}))      # not this checkpoint's own state
    (tmp_path / "checkpoint-12").write_text("")   # a file, not a folder
    assert latest_checkpoint(tmp_path) == (tmp_path / "checkpoint-4", 4)
