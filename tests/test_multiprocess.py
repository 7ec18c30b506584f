"""Real multi-process runs on the CPU (two processes, gloo; the synthetic tiny-random model, junk output):

- the transformers backend's decode loop on a model sharded by FSDP2 (`fully_shard` on a CPU device mesh):
  with `synced_forwards` both ranks finish, with the same tokens as the unsharded model; without it, the rank
  with more steps waits forever in FSDP's all-gather;
- every train setting (SFT one_stage / two_stage / sft_qa, DPO, GRPO one-stage and reflect-retry, RLOO; LoRA
  and full) through `stages/train.py` under `accelerate launch --config_file configs/accelerate/multi_cpu.yaml`
  (torchrun underneath): the ranks agree on the steps, the losses and the trained weights, and the saved
  adapter / model loads with exactly those weights; a `kill -9` of rank 1 mid-run, then the same command,
  resumes from the checkpoint and ends where an uninterrupted run ends.

accelerate cannot shard on a CPU (its FSDP and DeepSpeed paths need GPU process groups, see
configs/accelerate/multi_cpu.yaml), so the settings run as data parallel here; FSDP2 itself is exercised by
the first test. All settings share one launch to keep the cost to a few process start-ups.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKERS = Path(__file__).resolve().parent / "workers"
SETTINGS = {"one_stage": "dplus.jsonl", "two_stage": "dplus.jsonl", "sft_qa": "items.jsonl", "dpo_pm": "dpm.jsonl",
            "grpo_one_stage": "raw", "grpo_reflect_retry": "raw", "rloo": "raw"}
RESUME_STEPS = 4


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}


# --- FSDP2: lockstep decoding -----------------------------------------------------------------------------


def test_a_sharded_model_decodes_in_lockstep_only_with_synced_forwards(tiny_model_dir, tmp_path):
    port, out = _port(), tmp_path / "out"
    out.mkdir()
    procs = [subprocess.Popen([sys.executable, str(WORKERS / "sharded_decode.py"), str(tiny_model_dir), str(out),
                               "synced", "plain"],
                              env={**_env(), "RANK": str(r), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                                   "MASTER_PORT": str(port)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for r in range(2)]
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not (out / "rank0-plain.json").exists():
            assert all(p.poll() is None for p in procs), [p.stderr.read()[-2000:] for p in procs]
            time.sleep(0.1)
        assert (out / "rank0-plain.json").exists(), "rank 0 did not get through"
        # rank 0 is done with its plain decode; rank 1 has more steps and nobody to gather the shards with
        time.sleep(5)
        hung = not (out / "rank1-plain.json").exists() and procs[1].poll() is None
        procs[0].kill()        # rank 1 then learns that its peer is gone, inside the collective it waits in
        try:
            procs[1].wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
    finally:
        for p in procs:
            p.kill()
        errors = [p.communicate()[1] for p in procs]
    synced = [json.loads((out / f"rank{r}-synced.json").read_text()) for r in range(2)]
    for rec in synced:
        assert rec["sharded"] is True and rec["texts"] == rec["reference"]       # the unsharded model's tokens
    r0, r1 = synced
    assert r0["forwards"] < r1["forwards"] and r0["forwards"] + r0["idle"] == r1["forwards"] + r1["idle"]
    assert hung, "without synced_forwards rank 1 finished (expected it to wait in the all-gather)"
    assert "all_gather" in errors[1]      # it was waiting in FSDP's all-gather when rank 0 went away


# --- every setting under two processes ---------------------------------------------------------------------


def _files(d: Path) -> None:
    from helpers import tiny_params_dict
    from test_rl_training import episodes
    from test_training import dplus_rows, dpm_rows, item_rows

    from reflectevo.generation.run import write_shards

    p = tiny_params_dict(ROOT / "params.yaml", steps=2)
    p["train"]["rl"].update(enabled=True, max_steps=2, batch_size=2, num_generations=2, max_completion_length=4,
                            max_new_tokens_retry=4, lr=5e-2)
    for hp in ("sft", "dpo"):
        p["train"][hp]["batch_size"] = 2
    (d / "params-lora.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    (d / "params-full.yaml").write_text(yaml.safe_dump({**p, "train": {**p["train"], "method": "full"}}, sort_keys=False))
    p["train"]["sft"].update(max_steps=RESUME_STEPS, save_steps=1, save_total_limit=2)
    (d / "params-resume.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    for name, rows in (("dplus", dplus_rows(4)), ("dpm", dpm_rows(4)), ("items", item_rows(4))):
        (d / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "raw").mkdir()
    write_shards(d / "raw", list(episodes(4).values()), 50)


def _args(setting: str, params: str, name: str, checkpoints: str = "none") -> list[str]:
    return ["--setting", setting, "--params", params, "--train-data", SETTINGS[setting], "--out", f"models/{name}",
            "--metrics", f"metrics/{name}.json", "--checkpoints", checkpoints]


def _launch(d: Path, groups: list[list[str]], **kw) -> subprocess.Popen:
    argv = [a for i, g in enumerate(groups) for a in (["--next"] if i else []) + g]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "configs/accelerate/multi_cpu.yaml"), "--main_process_port", str(_port()),
           str(WORKERS / "train_many.py"), "rec", *argv]
    return subprocess.Popen(cmd, cwd=d, env={**_env(), **kw}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def _weights(d: Path, name: str, method: str, preset) -> dict[str, list[float]]:
    """The saved folder loaded as evaluate loads it, digested as the worker digests the trained model."""
    import torch
    from transformers import AutoModelForCausalLM
    from workers.train_many import digest

    from reflectevo.models.load import resolve_model

    folder = d / "models" / name
    if method == "full":
        return digest(AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32))
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(resolve_model("tiny-random", preset), dtype=torch.float32)
    return digest(PeftModel.from_pretrained(base, str(folder)))


def test_every_setting_trains_under_two_processes_and_a_killed_rank_resumes(tiny_preset, tmp_path):
    from reflectevo.training.checkpoint import latest_checkpoint

    d = tmp_path
    _files(d)
    resume = _args("one_stage", "params-resume.yaml", "resumed", "checkpoints/resumed")

    # 1. kill -9 rank 1 once a checkpoint is complete: the launcher takes the other rank down
    proc = _launch(d, [resume], SLOW_STEP="1.0")
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            found = [c for run in (d / "checkpoints/resumed").glob("one_stage-*") if (c := latest_checkpoint(run))]
            if found and (d / "rec/pid-rank1").exists():
                break
            time.sleep(0.1)
        assert proc.poll() is None and found, f"no checkpoint to kill after: {proc.stderr.read()[-3000:]}"
        os.kill(int((d / "rec/pid-rank1").read_text()), signal.SIGKILL)
        proc.wait(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode != 0 and not (d / "metrics/resumed.json").exists()

    # 2. one launch: the killed command again (resumes), an uninterrupted reference, every setting LoRA and full
    groups = [resume, _args("one_stage", "params-resume.yaml", "reference")]
    groups += [_args(s, f"params-{m}.yaml", f"{m}-{s}") for m in ("lora", "full") for s in SETTINGS]
    t0 = time.monotonic()
    proc = _launch(d, groups)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-4000:]
    print(f"{len(groups)} trainings in one two-process launch: {time.monotonic() - t0:.1f} s")

    # before any trainer exists, the ranks already know their roles (accelerate's state made with cpu=True on a
    # CPU-only machine; made without it, every rank would call itself the main one of one process)
    assert [json.loads((d / f"rec/roles-rank{r}.json").read_text()) for r in (0, 1)] == \
        [{"main": True, "processes": 2}, {"main": False, "processes": 2}]
    res = json.loads((d / "metrics/resumed.json").read_text())["one_stage"]
    ref = json.loads((d / "metrics/reference.json").read_text())["one_stage"]
    assert 0 < res["resumed_from_step"] < RESUME_STEPS and res["steps"] == ref["steps"] == RESUME_STEPS
    assert res["last_loss"] == pytest.approx(ref["last_loss"], abs=1e-4)
    assert not (d / "checkpoints/resumed").exists()                        # removed after success
    records = {}
    for name in ["resumed", "reference"] + [f"{m}-{s}" for m in ("lora", "full") for s in SETTINGS]:
        metrics = json.loads((d / "metrics" / f"{name}.json").read_text())
        assert metrics["trained"] is True, (name, metrics)
        roles = [k for k in ("one_stage", "reflector", "corrector", "answerer") if k in metrics]
        for role in roles:
            sub = name if len(roles) == 1 else f"{name}/{role}"
            rec = f"{name}-{role}" if len(roles) > 1 else name
            r0, r1 = (json.loads((d / "rec" / f"{rec}-rank{r}.json").read_text()) for r in (0, 1))
            assert r0["world_size"] == r1["world_size"] == 2, name
            assert r0["steps"] == r1["steps"] == metrics[role]["steps"], name
            assert r0["losses"] == r1["losses"] and r0["losses"], name              # the same logged losses
            assert r0["digest"] == r1["digest"], name                               # replicas stayed equal
            if name != "resumed":   # the resumed run's losses before the kill are in its checkpoint's history
                assert metrics[role]["last_loss"] == pytest.approx(r0["losses"][-1], abs=1e-4), name
            method = "full" if name.startswith("full") else "lora"
            saved = _weights(d, sub, method, tiny_preset)
            assert saved.keys() == r0["digest"].keys() and saved, name
            for k, (n, s, q) in saved.items():                                      # what rank 0 trained, saved
                assert n == r0["digest"][k][0] and s == pytest.approx(r0["digest"][k][1], abs=1e-5) \
                    and q == pytest.approx(r0["digest"][k][2], rel=1e-6), (name, k)
            records[rec] = r0
    resumed, reference = records["resumed"]["digest"], records["reference"]["digest"]
    assert resumed.keys() == reference.keys()                              # the resumed run ends where the other does
    for k, values in resumed.items():
        assert values == pytest.approx(reference[k], rel=1e-4, abs=1e-6), k
