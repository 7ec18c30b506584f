"""Peak memory (RSS) of one training step per setting and method on the CPU, each in a fresh process.

    .venv/bin/python bench/bench_memory.py [--steps 1]     # SmolLM2-135M (the packaged GGUF, converted), fp32

Full-parameter runs need weights that can be saved in full, so the SmolLM2 preset is used through its
converted HF folder (`models.convert_gguf_package`) as a local `source: hub` preset. Writes
bench/results/memory.json: per case peak RSS in MiB (`ru_maxrss` of the child, which includes Python,
torch and the tokenizer).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import typer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ALL = ("one_stage:lora:0", "one_stage:full:0", "dpo_pm:lora:0", "dpo_pm:full:0", "grpo_one_stage:lora:0",
       "grpo_one_stage:full:0.04", "grpo_reflect_retry:lora:0")

CHILD = r"""
import dataclasses, json, resource, sys, tempfile
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from reflectevo.config.presets import ModelPreset, LoraConfig
from reflectevo.training.config import RLHyper, SFTHyper, DPOHyper, TrainConfig
from reflectevo.training.data import rl_rows
from reflectevo.training.run import train_setting
sys.path.insert(0, sys.argv[1] + "/bench")
sys.path.insert(0, sys.argv[1] + "/tests")
from bench_rl import failed_attempts
from bench_train import rows as dplus
setting, method, beta, folder, steps = sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5], int(sys.argv[6])
preset = ModelPreset(source="hub", hub_id="HuggingFaceTB/SmolLM2-135M-Instruct", path=folder, dtype="float32",
                     lora=LoraConfig(r=8, alpha=16, targets=("q_proj", "k_proj", "v_proj", "o_proj")))
hp = SFTHyper(max_steps=steps, batch_size=4, max_length=768, save_steps=0)
cfg = TrainConfig(method=method, sft=hp, dpo=DPOHyper(**dataclasses.asdict(hp)),
                  rl=RLHyper(enabled=True, max_steps=steps, batch_size=4, num_generations=4, max_completion_length=32,
                             max_new_tokens_retry=32, beta=beta, save_steps=0, max_length=2048))
if setting == "dpo_pm":
    data = [{**{k: r[k] for k in ("id", "item_id", "task", "question", "choices", "answer", "trial1")},
             "chosen": {"reflection": r["reflection"]}, "rejected": {"reflection": "The question is about colours."}}
            for r in dplus(4 * steps)]
elif setting.startswith("grpo"):
    data = failed_attempts(steps)
else:
    data = dplus(4 * steps)
with tempfile.TemporaryDirectory() as d:
    from reflectevo.models.fingerprint import model_fingerprint
    res = train_setting(setting, "smollm2-135m", preset, model_fingerprint("smollm2-135m", preset), data, [], cfg,
                        Path(d) / "m")
assert res["trained"], res
print(json.dumps({"peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""


def main(steps: int = 1, cases: str = ",".join(ALL), out: Path = ROOT / "bench/results/memory.json") -> None:
    """`cases`: setting:method:beta, comma-separated."""
    from reflectevo.config.presets import load_preset
    from reflectevo.config.params import read_params
    from reflectevo.models.build import convert_gguf_package

    _, p = load_preset(read_params(ROOT / "params.yaml"), "smollm2-135m")
    folder = convert_gguf_package(p.package, p.file, p.package_version)
    results = []
    for case in cases.split(","):
        setting, method, beta = case.split(":")
        run = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), setting, method, str(beta), str(folder), str(steps)],
                             capture_output=True, text=True, check=False)
        line = run.stdout.strip().splitlines()[-1] if run.returncode == 0 else ""
        rec = {"setting": setting, "method": method, "beta": float(beta),
               **(json.loads(line) if line.startswith("{") else {"error": run.stderr[-500:]})}
        print(rec, flush=True)
        results.append(rec)
    doc = {"model": "SmolLM2-135M-Instruct (135M parameters), fp32, CPU", "steps": steps,
           "batch": "4 examples (SFT/DPO, max_length 768) or 4 rollouts x 32 tokens (RL)", "results": results}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    typer.run(main)
