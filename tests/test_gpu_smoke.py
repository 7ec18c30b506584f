"""bench/gpu_smoke.py (the check to run on a bare GPU machine) runs here with `--device cpu` on the synthetic
tiny model: the backend's greedy tokens equal `model.generate`'s, SFT / DPO / GRPO train (LoRA and full) and
their folders load, a stopped run resumes; its JSON says so."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_smoke_check_passes_on_a_cpu(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_smoke", ROOT / "bench" / "gpu_smoke.py")
    smoke = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(smoke)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")     # what --device cpu sets, undone after the test
    out = tmp_path / "smoke.json"
    assert smoke.main(["--device", "cpu", "--tokens", "12", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["ok"] is True and report["device"] == "cpu" and report["dtype"] == "float32"
    gen = report["checks"]["generation"]
    assert set(gen["phases"]) == {"trial", "reflection", "retry"}
    for phase in gen["phases"].values():   # fp32 on a CPU: every row the same, alone and batched
        assert phase["same_tokens_alone"] == phase["same_count_alone"] == phase["same_tokens_batched"] == phase["prompts"]
    training = report["checks"]["training"]
    assert {k for k in training if "/" in k} == {f"{s}/{m}" for s in ("one_stage", "dpo_pm", "grpo_one_stage")
                                                 for m in ("lora", "full")}
    assert all(v["ok"] and v["steps"] == 2 and v["saved_folder_loads_and_generates"]
               for k, v in training.items() if "/" in k)
    resume = report["checks"]["checkpoint_resume"]
    assert resume["ok"] and resume["resumed_from_step"] == 2 and resume["last_loss"] == resume["uninterrupted_last_loss"]
