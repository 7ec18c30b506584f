"""Training throughput: reflectevo's one-stage SFT vs a plain TRL script (same model, data, settings).

    .venv/bin/python bench/bench_train.py [--preset smollm2-135m] [--steps 8] [--repeats 2]

Both sides train the same LoRA on the same prompt/completion examples with the same SFTConfig values;
tokens/s = tokens in the tokenized examples seen / wall time of `trainer.train()`. Runs alternate
(ours, plain, ours, plain, ...) so load drifts hit both. Writes bench/results/train.json.
Target: ours >= 0.9x plain.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import typer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rows(n: int) -> list[dict]:
    return [{"id": f"s{i}", "item_id": f"item-{i}", "task": "rg/chain_sum",
             "question": f"State the final answer to the following arithmetic problem: {i} + {i % 7} =",
             "choices": None, "answer": str(i + i % 7), "trial1": f"Thought: I add them.\nAction: Finish[{i}]",
             "reflection": "I dropped the second term. Plan: add every term, then check the sum once more.",
             "trial2": f"Thought: {i} + {i % 7} = {i + i % 7}.\nAction: Finish[{i + i % 7}]"} for i in range(n)]


def main(preset: str = "smollm2-135m", steps: int = 8, batch_size: int = 4, repeats: int = 2,
         out: Path = ROOT / "bench/results/train.json") -> None:
    import dataclasses

    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from reflectevo.training.config import DPOHyper, SFTHyper, TrainConfig

    from reflectevo.config.presets import load_preset

    from reflectevo.config.params import read_params
    from reflectevo.models.load import load_tokenizer
    from reflectevo.models.fingerprint import model_fingerprint
    from reflectevo.training.model import _base_model, _common_args, _lora
    from reflectevo.training.data import examples
    from reflectevo.training.run import train_setting

    name, p = load_preset(read_params(ROOT / "params.yaml"), preset)
    hp = SFTHyper(epochs=1.0, max_steps=steps, batch_size=batch_size, grad_accum=1, max_length=768, warmup_ratio=0.0)
    cfg = TrainConfig(seed=0, sft=hp, dpo=DPOHyper(**dataclasses.asdict(hp)))
    data = rows(steps * batch_size)
    ex = examples("one_stage", data)["one_stage"]

    def ours() -> tuple[float, float]:
        with tempfile.TemporaryDirectory() as d:
            r = train_setting("one_stage", name, p, model_fingerprint(name, p), data, [], cfg, Path(d) / "m")
            return r["one_stage"]["train_tokens_per_s"], r["one_stage"]["seconds"]

    def plain() -> tuple[float, float]:
        # what a user would write by hand with TRL: same args, no reflectevo code in the loop
        with tempfile.TemporaryDirectory() as d:
            args = SFTConfig(**_common_args(SFTConfig, hp, 0, p.lr_sft, Path(d), False, p.dtype), completion_only_loss=True)
            torch.manual_seed(0)
            tr = SFTTrainer(model=_base_model(name, p), processing_class=load_tokenizer(name, p), peft_config=_lora(p),
                            train_dataset=Dataset.from_list(ex), args=args)
            t0 = time.perf_counter()
            tr.train()
            secs = time.perf_counter() - t0
            tokens = sum(len(x) for x in tr.train_dataset["input_ids"]) / len(tr.train_dataset)
            return round(tokens * tr.state.global_step * batch_size / secs, 1), secs

    results: dict[str, list] = {"ours": [], "plain": []}
    for _ in range(repeats):
        results["ours"].append(ours())
        results["plain"].append(plain())
    o = statistics.median(t for t, _ in results["ours"])
    q = statistics.median(t for t, _ in results["plain"])
    report = {"bench": "train_tokens_per_s", "preset": name, "steps": steps, "batch_size": batch_size,
              "repeats": repeats, "ours_tokens_per_s": o, "plain_trl_tokens_per_s": q, "ratio": round(o / q, 3),
              "target_ratio": 0.9, "runs": results, "machine": {"cpus": __import__("os").cpu_count(),
                                                                "python": platform.python_version(),
                                                                "torch": torch.__version__}}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("preset", "ours_tokens_per_s", "plain_trl_tokens_per_s", "ratio")}))


if __name__ == "__main__":
    typer.run(main)
