"""Generate-stage benchmarks (reflection generation at scale), all measured in one run.

    .venv/bin/python bench/bench_generate.py [--preset smollm2-135m] [--items 400] [--batch 64] [--tokens 48]
    .venv/bin/python bench/bench_generate.py --no-stage-runs --merge   # throughput + batching only

1. throughput: our `generate()` (all phases) vs raw batched `model.generate` replaying exactly the prompts
   our run sent, with the same batch composition -> ratio raw_time / our_time (target >= 0.85);
2. batching: the same prompts one at a time, as the original design did -> our speed-up (target >= 5x);
3. incremental: add 10% new items and rerun -> cost / full-run cost (target <= 0.15);
4. crash: kill -9 a generating subprocess at about 50%, resume -> resumed cost / full-run cost
   (target <= 0.60), and the final records equal an uninterrupted run (greedy trial 1 byte for byte,
   every episode key present, and, since each sample has its own seed, the sampled reflections too).
Writes bench/results/generate.json.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import typer
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class Recording:
    """Wraps a backend and records each generate() call (prompts, sampling)."""

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, []
        self.dtype, self.batch_size = inner.dtype, inner.batch_size

    def render(self, m):
        return self.inner.render(m)

    def generate(self, prompts, sampling, seeds=None):
        self.calls.append((list(prompts), sampling))
        return self.inner.generate(prompts, sampling, seeds=seeds)


def _params(tmp: Path, preset: str, items: int, tokens: int, batch: int) -> Path:
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["model"] = preset
    p["models"][preset]["gen_batch_size"] = batch  # also the journal chunk: what a kill can lose
    p["prepare"]["tasks"] = [{"name": "rg/chain_sum", "n_train": items, "n_test": 2,
                              "options": {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 1}}]
    p["generate"].update(max_new_tokens_trial=tokens, max_new_tokens_reflection=tokens)
    out = tmp / "params.yaml"
    out.write_text(yaml.safe_dump(p, sort_keys=False))
    return out


def _stage(*args) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *map(str, args)], check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    return time.perf_counter() - t0


def _generate_kwargs(sampling) -> dict:
    """`model.generate` sampling arguments matching our backend's Sampling (greedy when temperature is 0)."""
    if sampling.temperature > 0:
        return dict(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
    return dict(do_sample=False, temperature=None, top_p=None, top_k=None)


def main(preset: str = "smollm2-135m", items: int = 400, tokens: int = 48, batch: int = 64, batch1_prompts: int = 60,
         out: Path = ROOT / "bench/results/generate.json",
         stage_runs: bool = typer.Option(True, help="also measure incremental growth and crash-resume (stage runs)"),
         merge: bool = typer.Option(False, help="keep the other sections already in --out (each records its run)"),
         ) -> None:
    import torch

    from reflectevo.backends.hf import TransformersBackend
    from reflectevo.config.presets import load_preset
    from reflectevo.config.params import load_section, read_params
    from reflectevo.generation.run import generate
    from reflectevo.episodes.shards import load_episodes
    from reflectevo.generation.keys import make_spec
    from reflectevo.models.fingerprint import model_fingerprint
    from reflectevo.tasks.items import load_items

    from reflectevo.generation.keys import SAMPLER

    report: dict = {"sampler": SAMPLER, "preset": preset, "items": items, "max_new_tokens": tokens, "batch_size": batch,
                    "cpus": os.cpu_count(), "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        params = _params(tmp, preset, items, tokens, batch)
        _stage(ROOT / "stages/prepare.py", "--params", params, "--out", tmp / "sources")
        all_items, tasks = load_items(tmp / "sources/train.jsonl")
        pr = read_params(params)
        name, p = load_preset(pr)
        cfg = load_section(pr, "generate")
        spec = make_spec(model_fingerprint(name, p), p.dtype, cfg)
        backend = Recording(TransformersBackend(name, p))

        # 1. throughput vs raw batched generate on the same prompts and batches
        t0 = time.perf_counter()
        generate(all_items, tasks, lambda b=backend: b, spec, tmp / "raw_bench", chunk_size=max(p.gen_batch_size, 8),
                 progress=False)
        ours = time.perf_counter() - t0
        model, tok = backend.inner.model, backend.inner.tokenizer
        t0 = time.perf_counter()
        for prompts, sampling in backend.calls:
            order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
            for s in range(0, len(order), backend.batch_size):
                chunk = [prompts[i] for i in order[s:s + backend.batch_size]]
                enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
                kw = _generate_kwargs(sampling)
                with torch.inference_mode():
                    model.generate(**enc, max_new_tokens=sampling.max_new_tokens, pad_token_id=tok.pad_token_id, **kw)
        raw = time.perf_counter() - t0
        n_prompts = sum(len(c[0]) for c in backend.calls)
        report["throughput"] = {"prompts": n_prompts, "ours_s": round(ours, 2), "raw_batched_s": round(raw, 2),
                                "ratio_raw_over_ours": round(raw / ours, 3), "target": 0.85}

        # 2. batch-1 loop (the original design) on a subset of the same prompts, spread evenly over every
        #    phase (trial 1, reflections, trial 2: their lengths differ), each with its call's sampling
        flat = [(p_, s_) for prompts, s_ in backend.calls for p_ in prompts]
        step = max(1, len(flat) // batch1_prompts)
        subset = flat[::step][:batch1_prompts]
        t0 = time.perf_counter()
        for i, (prompt, sampling) in enumerate(subset):
            enc = tok([prompt], return_tensors="pt", add_special_tokens=False)
            kw = _generate_kwargs(sampling)
            torch.manual_seed(i)
            with torch.inference_mode():
                model.generate(**enc, max_new_tokens=sampling.max_new_tokens, pad_token_id=tok.pad_token_id, **kw)
        per_prompt_b1 = (time.perf_counter() - t0) / len(subset)
        report["batching"] = {"batch1_prompts": len(subset), "batch1_sampled": sum(s.temperature > 0 for _, s in subset),
                              "batch1_subset": "every %d-th prompt of the run, all phases" % step,
                              "batch1_s_per_prompt": round(per_prompt_b1, 3),
                              "ours_s_per_prompt": round(ours / n_prompts, 3),
                              "speedup": round(per_prompt_b1 / (ours / n_prompts), 2), "target": 5.0}
        del backend, model

        if stage_runs:
            # 3. incremental growth (+10% items) and 4. kill -9 at ~50% then resume, through the real stage
            gen = [ROOT / "stages/generate.py", "--params", params, "--sources", tmp / "sources/train.jsonl",
                   "--summary", tmp / "g.json", "--no-progress"]
            base_n = int(items / 1.1)
            head = tmp / "head.jsonl"
            head.write_text("".join(line for line in (tmp / "sources/train.jsonl").read_text().splitlines(True)[:base_n]))
            full = _stage(*gen[:4], head, "--out", tmp / "inc", *gen[5:])
            grow = _stage(*gen, "--out", tmp / "inc")
            computed = json.loads((tmp / "g.json").read_text())["run"]["computed"]
            report["incremental"] = {"base_items": base_n, "new_items": items - base_n, "computed_on_rerun": computed,
                                     "full_s": round(full, 2), "rerun_s": round(grow, 2),
                                     "cost_ratio": round(grow / full, 3), "target": 0.15}

            ref_s = _stage(*gen, "--out", tmp / "ref")
            proc = subprocess.Popen([sys.executable, *map(str, gen), "--out", str(tmp / "crash")],
                                    env={**os.environ, "PYTHONPATH": str(ROOT)},
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            journal = tmp / "crash/journal.jsonl"
            t0 = time.perf_counter()
            while proc.poll() is None and time.perf_counter() - t0 < 1200:
                if journal.exists() and journal.read_bytes().count(b"\n") >= (items // 2 // batch) * batch:
                    break
                time.sleep(0.1)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            saved = len(load_episodes(tmp / "crash"))
            resume_s = _stage(*gen, "--out", tmp / "crash")
            a, b = load_episodes(tmp / "crash"), load_episodes(tmp / "ref")
            report["crash_resume"] = {"episodes_saved_at_kill": saved, "full_s": round(ref_s, 2),
                                      "resume_s": round(resume_s, 2), "cost_ratio": round(resume_s / ref_s, 3),
                                      "target": 0.60, "same_keys": set(a) == set(b),
                                      "greedy_trial1_identical": all(a[k]["trial1"] == b[k]["trial1"] for k in a),
                                      "sampled_reflections_identical": all(
                                          [s["reflection"] for s in a[k]["samples"]] == [s["reflection"] for s in b[k]["samples"]]
                                          for k in a),
                                      "episodes_identical": all(a[k] == b[k] for k in a)}
    report["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]   # other load distorts absolute times
    if merge and out.exists():  # keep sections measured by an earlier run, marked with that run's settings
        earlier = json.loads(out.read_text())
        run_keys = ("sampler", "preset", "items", "max_new_tokens", "batch_size", "loadavg_at_start", "loadavg_at_end")
        for section in ("throughput", "batching", "incremental", "crash_resume"):
            if section not in report and section in earlier:
                report[section] = {**earlier[section], "run": {k: earlier.get(k) for k in run_keys}}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    typer.run(main)
