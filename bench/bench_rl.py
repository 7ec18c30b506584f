"""GRPO throughput: reflectevo's grpo_one_stage vs a plain TRL GRPOTrainer script (same model, data, rollouts, lengths).

    .venv/bin/python bench/bench_rl.py [--preset smollm2-135m] [--steps 3] [--repeats 2]

Both sides train the same LoRA with the same GRPOConfig values (num_generations, batch, max_completion_length,
temperature, beta, loss_type, learning rate) on the same one-stage prompts over failed trial-1 attempts.
The plain side is what a user writes by hand: the base loaded with `from_pretrained`, a one-line
exact-match reward; ours adds our verifier reward, checkpoint keys, cards and curves. Optimizer steps/s =
steps / wall time of `trainer.train()`. Runs alternate (ours, plain, ours, plain, ...) so load drifts hit
both. Writes bench/results/rl.json. Target: ours >= 0.9x plain.
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


def failed_attempts(n: int) -> list[dict]:
    """`rl_rows`-shaped rows: chain-sum items whose trial 1 dropped a term."""
    from reflectevo.tasks import Item

    out = []
    for i in range(n):
        item = Item(id=f"item-{i}", task="rg/chain_sum", answer=str(i + i % 7),
                    question=f"State the final answer to the following arithmetic problem: {i} + {i % 7} =")
        out.append({"item": item.to_dict(), "trial1": f"Thought: I add them.\nAction: Finish[{i}]", "rejected": str(i),
                    "protocol": "oracle", "episode_id": f"ep{i}"})
    return out


def main(preset: str = "smollm2-135m", steps: int = 3, num_generations: int = 4, max_completion_length: int = 32,
         repeats: int = 2, out: Path = ROOT / "bench/results/rl.json") -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from reflectevo.training.config import RLHyper, TrainConfig

    from reflectevo.config.presets import load_preset

    from reflectevo.config.params import read_params
    from reflectevo.models.load import load_tokenizer, resolve_dtype, resolve_model
    from reflectevo.models.fingerprint import model_fingerprint
    from reflectevo.training.model import _lora
    from reflectevo.training.data import examples
    from reflectevo.training.run import train_setting

    name, p = load_preset(read_params(ROOT / "params.yaml"), preset)
    hp = RLHyper(enabled=True, max_steps=steps, batch_size=num_generations, num_generations=num_generations,
                 max_completion_length=max_completion_length, save_steps=0, max_length=2048)
    cfg = TrainConfig(seed=0, rl=hp)
    rows = failed_attempts(steps)
    ex = examples("grpo_one_stage", rows)["one_stage"]

    def ours() -> float:
        with tempfile.TemporaryDirectory() as d:
            r = train_setting("grpo_one_stage", name, p, model_fingerprint(name, p), rows, [], cfg, Path(d) / "m")
            return steps / r["one_stage"]["seconds"]

    def plain() -> float:
        def exact(completions, answer, **_):
            return [1.0 if f"Finish[{a}]" in c[-1]["content"] else 0.0 for c, a in zip(completions, answer)]

        with tempfile.TemporaryDirectory() as d:
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_pretrained(resolve_model(name, p), dtype=torch.float32)
            data = Dataset.from_list([{"prompt": e["prompt"], "answer": json.loads(e["item"])["answer"]} for e in ex])
            args = GRPOConfig(output_dir=d, max_steps=steps, per_device_train_batch_size=num_generations,
                              num_generations=num_generations, max_completion_length=max_completion_length,
                              temperature=hp.temperature, beta=hp.beta, loss_type=hp.loss_type, learning_rate=hp.lr,
                              logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, seed=0,
                              disable_tqdm=True, lr_scheduler_type=hp.lr_scheduler, warmup_steps=0.0,
                              bf16=resolve_dtype(p.dtype) == torch.bfloat16)  # as ours (the preset's dtype)
            trainer = GRPOTrainer(model=model, reward_funcs=exact, args=args, train_dataset=data,
                                  processing_class=load_tokenizer(name, p), peft_config=_lora(p))
            t0 = time.perf_counter()
            trainer.train()
            return steps / (time.perf_counter() - t0)

    runs: dict[str, list[float]] = {"ours": [], "plain": []}
    for _ in range(repeats):
        runs["ours"].append(ours())
        runs["plain"].append(plain())
    med = {k: statistics.median(v) for k, v in runs.items()}
    result = {"preset": name, "steps": steps, "num_generations": num_generations,
              "max_completion_length": max_completion_length, "batch": num_generations, "repeats": repeats,
              "steps_per_s": {k: [round(x, 4) for x in v] for k, v in runs.items()},
              "median_steps_per_s": {k: round(v, 4) for k, v in med.items()},
              "ratio_ours_over_plain": round(med["ours"] / med["plain"], 3), "target_ratio": 0.9,
              "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
              "note": "one run; the ratio is within it (alternating runs), absolute steps/s depend on the machine's load"}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    typer.run(main)
