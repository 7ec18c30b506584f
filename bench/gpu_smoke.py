"""A device check that fits a bare GPU machine: no vLLM, no hub, no data; minutes on one GPU.

    python bench/gpu_smoke.py                      # CUDA, bf16 (where the GPU has it natively, else fp16)
    python bench/gpu_smoke.py --device cpu         # the same checks on a CPU, fp32 (tests/test_gpu_smoke.py)
    python bench/gpu_smoke.py --model /some/folder # a save_pretrained Llama-style folder instead of the tiny model

It builds the synthetic tiny-random model on the machine (reflectevo/models/build.py: a ~100k-parameter Llama
and a locally trained tokenizer; its output is junk), or loads `--model`, and runs on the chosen device:

1. generation: the transformers backend (`reflectevo.backends.hf`) on trial-1, reflection and retry prompts
   built by `reflectevo.prompts`, greedy, against plain `model.generate` on the same prompts: each prompt
   alone (the same computation, so the same tokens are required) and as one batch (shared prefix, padding:
   the share of identical rows is reported, since bf16 rounding may flip a near-tie of a random model);
2. training through `reflectevo.training.run.train_setting`, two steps each: SFT (one_stage), DPO (dpo_pm) and
   GRPO (grpo_one_stage), with LoRA and with every weight (`train.method: full`); each saved folder is
   loaded back and generates;
3. a checkpoint and a resume: an SFT run stopped after its second step (an exception in a step callback, as a
   crash would) and run again resumes from the checkpoint and ends with the uninterrupted run's loss.

Writes a JSON of what ran, its outcome and timings (`--out`, default bench/results/gpu_smoke-<device>.json) and
exits 1 if a check failed. Needs torch, transformers, peft, trl, datasets, accelerate and this repository on
PYTHONPATH (docs/gpu.md lists what to send to a machine without internet).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

QUESTIONS = [("What is 3 + 4?", "7"), ("What is 12 + 30?", "42"), ("What is 5 + 9 + 2?", "16"),
             ("What is 8 + 1?", "9"), ("What is 25 + 25?", "50"), ("What is 7 + 6 + 1?", "14")]


def _items():
    from reflectevo.tasks import Item

    return [Item(id=f"smoke-{i}", task="rg/chain_sum", question=q, answer=a) for i, (q, a) in enumerate(QUESTIONS)]


def _prompts(backend) -> dict[str, list[str]]:
    """Trial 1, reflection and retry prompts of the ReflectEvo protocol, rendered by the model's chat template."""
    from reflectevo.prompts import reflection_messages, trial_messages
    from reflectevo.tasks.registry import get_task

    task = get_task("rg/chain_sum")
    items = _items()
    wrong = [f"Thought: I add the numbers.\nAction: Finish[{int(it.answer) + 1}]" for it in items]
    refl = "I added one too many. Plan: add each term again and check the sum."
    return {"trial": [backend.render(trial_messages(task, it)) for it in items],
            "reflection": [backend.render(reflection_messages(it, w, None)) for it, w in zip(items, wrong)],
            "retry": [backend.render(trial_messages(task, it, reflection=refl, previous=w, retry=True))
                      for it, w in zip(items, wrong)]}


def check_generation(name: str, preset, device: str, tokens: int) -> dict[str, Any]:
    """Our backend's greedy tokens vs `model.generate`'s, per prompt (must match) and as a batch (reported)."""
    import torch

    from reflectevo.backends.hf import TransformersBackend
    from reflectevo.sampling import Sampling

    t0 = time.perf_counter()
    backend = TransformersBackend(name, preset, batch_size=len(QUESTIONS))
    load_s = time.perf_counter() - t0
    model, tok = backend.model, backend.tokenizer
    out: dict[str, Any] = {"device": str(model.device), "dtype": backend.dtype, "load_s": round(load_s, 3),
                           "shared_prefix_kernel": backend.cascade, "phases": {}}
    stop = backend.stop_ids

    def reference(prompts: list[str]) -> list[list[int]]:
        enc = tok(prompts, add_special_tokens=False, return_tensors="pt", padding=True).to(model.device)
        with torch.inference_mode():
            seq = model.generate(**enc, max_new_tokens=tokens, do_sample=False, eos_token_id=stop,
                                 pad_token_id=tok.pad_token_id)
        rows = []
        for row in seq[:, enc["input_ids"].shape[1]:].tolist():
            cut = next((i for i, t in enumerate(row) if t in stop), len(row))
            rows.append(row[:cut])
        return rows

    def ours(prompts: list[str], batch: int):
        backend.batch_size = batch
        return backend.generate(prompts, Sampling(tokens))

    ok = True
    for phase, prompts in _prompts(backend).items():
        t0 = time.perf_counter()
        alone_ref = [reference([p])[0] for p in prompts]
        ref_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        gens1 = ours(prompts, 1)
        ours_s = time.perf_counter() - t0
        # compared as text (the backend returns text; token ids re-tokenized from it could merge differently)
        alone = [tok.decode(r, skip_special_tokens=True) == g.text for r, g in zip(alone_ref, gens1)]
        t0 = time.perf_counter()
        batch_ref = reference(prompts)
        batch_ref_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        gens = ours(prompts, len(prompts))
        batch_s = time.perf_counter() - t0
        batched = [tok.decode(r, skip_special_tokens=True) == g.text for r, g in zip(batch_ref, gens)]
        counts = [g.n_new_tokens == len(r) for r, g in zip(alone_ref, gens1)]
        out["phases"][phase] = {"prompts": len(prompts), "same_tokens_alone": sum(alone), "same_count_alone": sum(counts),
                                "same_tokens_batched": sum(batched), "new_tokens": sum(g.n_new_tokens for g in gens1),
                                "seconds": {"generate_alone": round(ref_s, 3), "ours_alone": round(ours_s, 3),
                                            "generate_batch": round(batch_ref_s, 3), "ours_batch": round(batch_s, 3)}}
        ok = ok and all(alone) and all(counts)
    out["ok"] = ok
    return out


def _rows():
    items = _items()
    dplus = [{"id": f"s{i}", "item_id": it.id, "task": it.task, "question": it.question, "choices": None,
              "answer": it.answer, "trial1": f"Thought: guess.\nAction: Finish[{int(it.answer) + 1}]",
              "reflection": "I added one too many. Plan: add each term again.",
              "trial2": f"Thought: the sum is {it.answer}.\nAction: Finish[{it.answer}]"} for i, it in enumerate(items)]
    dpm = []
    for r in dplus:
        def side(text, ok, r=r):
            return {"sample_id": "x", "demand_id": "1-1-1", "reflection": text, "trial2": r["trial2"],
                    "trial2_answer": r["answer"], "trial2_correct": ok}
        dpm.append({**{k: r[k] for k in ("id", "item_id", "task", "question", "choices", "answer", "trial1")},
                    "chosen": side("Add each term again, carefully.", True),
                    "rejected": side("The question is about colours.", False)})
    episodes = {f"ep{i}": {"episode_id": f"ep{i}", "item_id": it.id, "task": it.task, "item": it.to_dict(),
                           "trial1": {"attempt": f"Thought: guess.\nAction: Finish[{int(it.answer) + 1}]",
                                      "extracted": str(int(it.answer) + 1), "correct": False}}
                for i, it in enumerate(items)}
    from reflectevo.training.data import rl_rows

    return {"one_stage": dplus, "dpo_pm": dpm, "grpo_one_stage": rl_rows(episodes, "oracle")}


def _config(method: str, steps: int, save_steps: int = 0):
    from reflectevo.training.config import DPOHyper, RLHyper, SFTHyper, TrainConfig

    hp = {"max_steps": steps, "batch_size": 2, "max_length": 1024, "save_steps": save_steps, "save_total_limit": 3}
    return TrainConfig(seed=0, method=method, sft=SFTHyper(**hp), dpo=DPOHyper(**hp, beta=0.1),
                       rl=RLHyper(**hp, enabled=True, num_generations=2, max_completion_length=8,
                                  max_new_tokens_retry=8, lr=1e-3))


def _loads_and_generates(folder: Path, name: str, preset, method: str) -> bool:
    from reflectevo.backends.hf import TransformersBackend
    from reflectevo.sampling import Sampling

    backend = TransformersBackend(name, preset, adapter=folder)
    [g] = backend.generate([backend.render([{"role": "user", "content": "What is 2 + 2?"}])], Sampling(4))
    return g.n_prompt_tokens > 0


def check_training(name: str, preset, work: Path) -> dict[str, Any]:
    from reflectevo.models.fingerprint import model_fingerprint
    from reflectevo.training.run import train_setting

    fp, rows, out = model_fingerprint(name, preset), _rows(), {}
    for method in ("lora", "full"):
        for setting in ("one_stage", "dpo_pm", "grpo_one_stage"):
            t0 = time.perf_counter()
            folder = work / f"{method}-{setting}"
            res = train_setting(setting, name, preset, fp, rows[setting], [], _config(method, 2), folder)
            seconds = time.perf_counter() - t0
            role = next(k for k in ("one_stage", "reflector") if k in res)
            loads = _loads_and_generates(folder, name, preset, method)
            out[f"{setting}/{method}"] = {"ok": bool(res.get("trained")) and res[role]["steps"] == 2 and loads,
                                          "steps": res[role]["steps"], "train_loss": res[role]["train_loss"],
                                          "train_s": res[role]["seconds"], "total_s": round(seconds, 2),
                                          "saved_folder_loads_and_generates": loads}
    return out


def check_resume(name: str, preset, work: Path) -> dict[str, Any]:
    """Stop an SFT run as step 3 begins (checkpoints after each step; nothing saved at the end), run it again:
    it resumes from step 2 and ends with the uninterrupted run's loss."""
    from reflectevo.models.fingerprint import model_fingerprint
    from reflectevo.training import run

    fp, rows = model_fingerprint(name, preset), _rows()["one_stage"]
    cfg = _config("lora", 3, save_steps=1)
    orig = run.step_logger

    class Stop(Exception):
        pass

    def stopping(live, prefix):
        cb = orig(live, prefix)

        def on_step_begin(args, state, control, **kw):   # step 2 done and saved: stop as a crash would
            if state.global_step == 2:
                raise Stop
        cb.on_step_begin = on_step_begin
        return cb

    t0 = time.perf_counter()
    run.step_logger = stopping
    try:
        with contextlib.suppress(Stop):
            run.train_setting("one_stage", name, preset, fp, rows, [], cfg, work / "resumed",
                              checkpoint_dir=work / "checkpoints")
    finally:
        run.step_logger = orig
    stopped = sorted(p.name for p in (work / "checkpoints").glob("*/checkpoint-*"))
    res = run.train_setting("one_stage", name, preset, fp, rows, [], cfg, work / "resumed",
                            checkpoint_dir=work / "checkpoints")["one_stage"]
    ref = run.train_setting("one_stage", name, preset, fp, rows, [], cfg, work / "reference")["one_stage"]
    same = abs(res["last_loss"] - ref["last_loss"]) <= 1e-3 * max(1.0, abs(ref["last_loss"]))
    return {"ok": res["resumed_from_step"] == 2 and res["steps"] == ref["steps"] == 3 and same,
            "checkpoints_at_stop": stopped, "resumed_from_step": res["resumed_from_step"], "steps": res["steps"],
            "last_loss": res["last_loss"], "uninterrupted_last_loss": ref["last_loss"],
            "seconds": round(time.perf_counter() - t0, 2)}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 | auto (default: auto on cuda, "
                                                  "float32 on cpu)")
    ap.add_argument("--model", default=None, help="a local save_pretrained folder (default: the tiny random model)")
    ap.add_argument("--tokens", type=int, default=24, help="greedy new tokens per prompt")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""   # before torch starts CUDA: every path takes its CPU branch
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_smoke: no CUDA device visible; run with --device cpu for the CPU check", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    from reflectevo.config.presets import LoraConfig, ModelPreset
    from reflectevo.models.load import resolve_dtype

    dtype = args.dtype or ("auto" if args.device == "cuda" else "float32")
    if args.model:
        preset = ModelPreset(source="hub", path=str(Path(args.model).resolve()), dtype=dtype, lr_sft=1e-3, lr_dpo=1e-4,
                             lr_full=1e-4)
    else:
        preset = ModelPreset(source="tiny-random", dtype=dtype, max_length=2048, lora=LoraConfig(r=4, alpha=8),
                             lr_sft=1e-2, lr_dpo=1e-3, lr_full=1e-3)
    name = "smoke"
    import peft
    import transformers
    import trl

    report: dict[str, Any] = {
        "script": "bench/gpu_smoke.py", "device": args.device,
        "device_name": torch.cuda.get_device_name(0) if args.device == "cuda" else _cpu_name(),
        "dtype": str(resolve_dtype(dtype)).replace("torch.", ""), "model": args.model or "tiny-random (synthetic)",
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "cuda": torch.version.cuda, "transformers": transformers.__version__, "peft": peft.__version__,
                     "trl": trl.__version__},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "checks": {}}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_smoke-") as tmp:
        work = Path(tmp)
        steps = (("generation", lambda: check_generation(name, preset, args.device, args.tokens)),
                 ("training", lambda: check_training(name, preset, work / "train")),
                 ("checkpoint_resume", lambda: check_resume(name, preset, work / "resume")))
        for key, fn in steps:
            t0 = time.perf_counter()
            try:
                report["checks"][key] = fn()
            except Exception as e:  # noqa: BLE001 - recorded; the other checks still run
                report["checks"][key] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:2000]}
            report["checks"][key]["check_s"] = round(time.perf_counter() - t0, 2)
            if args.device == "cuda":
                report["checks"][key]["max_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    report["seconds"] = round(time.perf_counter() - t_all, 2)
    checks = report["checks"]
    flat = {k: v["ok"] for k, v in checks.items() if "ok" in v}
    flat.update({f"training:{k}": v["ok"] for k, v in checks.get("training", {}).items() if isinstance(v, dict)})
    report["ok"] = all(flat.values())
    out = args.out or ROOT / "bench" / "results" / f"gpu_smoke-{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    failed = [k for k, v in flat.items() if not v]
    print(f"gpu_smoke: {'all checks passed' if not failed else 'FAILED: ' + ', '.join(failed)} "
          f"({report['seconds']} s, {report['device_name']}, {report['dtype']}) -> {out}")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
