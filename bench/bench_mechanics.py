"""The generate stage before and after the trial-mechanics change, on the same items, in one run.

    .venv/bin/python bench/bench_mechanics.py [--items 200] [--dtype float32] [--before 9be08cf]

"before" is the project at commit `--before` (trials ran to max_new_tokens, no prefix, last answer
judged, reflections to their cap, `model.generate` on full prompts); "after" is this checkout. Each side
runs its own `stages/generate.py` with its own default generation parameters (token budgets, sampling,
prompts) except `k` (reflections per failure), set to `--k` on both so an episode costs the same number
of reflections, in a subprocess on the same train items: `--items` of rg/chain_sum (1-digit, 2-3 terms),
a task both versions support, prepared once by this checkout; same model preset and dtype.
Reported per side: episodes/s (generation time, from the stage's own summary, and wall time), the fix
rate (trial 1 wrong -> trial 2 right, per sample) and repeat rate, prompt and generated tokens per phase
(reflection prompts included), and the stop reasons; then the speed-up ratio.
Writes bench/results/mechanics.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

import typer
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _checkout(commit: str, dest: Path) -> Path:
    data = subprocess.run(["git", "-C", str(ROOT), "archive", commit], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return dest


TASKS = [{"name": "rg/chain_sum", "n_train": 0, "n_test": 4,
          "options": {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 1}}]


def _params(tree: Path, out: Path, dtype: str, items: int, k: int) -> Path:
    p = yaml.safe_load((tree / "params.yaml").read_text())
    p["model"] = "smollm2-135m"
    p["models"]["smollm2-135m"]["dtype"] = dtype
    p["prepare"]["tasks"] = [{**TASKS[0], "n_train": items}]
    p["generate"]["limit"] = items
    p["generate"]["k"] = k
    out.write_text(yaml.safe_dump(p, sort_keys=False))
    return out


def _run(tree: Path, params: Path, sources: Path, raw: Path, summary: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree), "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "stages/generate.py", "--params", str(params), "--sources", str(sources),
                    "--out", str(raw), "--summary", str(summary), "--no-progress"], cwd=tree, env=env, check=True)
    return time.perf_counter() - t0


def _side(raw: Path, summary: Path, wall: float) -> dict:
    from reflectevo.diagnostics import episode_diagnostics
    from reflectevo.episodes.shards import iter_episodes

    eps = list(iter_episodes(raw, journals=False))   # Parquet shards (or the .jsonl ones of earlier versions)
    s = json.loads(summary.read_text())
    d = episode_diagnostics(eps)["overall"]
    run = s["run"]
    return {"episodes": len(eps), "generate_seconds": run["seconds"], "wall_seconds": round(wall, 1),
            "episodes_per_s": round(len(eps) / run["seconds"], 4), "prompt_tokens": run["prompt_tokens"],
            "prefilled_tokens": run.get("prefilled_tokens"), "new_tokens": run["new_tokens"],
            "trial1_correct": d["trial1_correct"], "samples": d["samples"], "fixes": d["fixes"],
            "fix_rate": d["fix_rate"], "repeat_rate": d["repeat_rate"],
            "trial2_format_failures": d["trial2_format_failures"], "tokens_per_phase": d["tokens"],
            "stop_reasons": d["stop_reasons"], "gen_params": eps[0]["gen"] if eps else None}


def main(items: int = 200, dtype: str = "float32", before: str = "9be08cf", k: int = 3,
         out: Path = ROOT / "bench/results/mechanics.json") -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        old = _checkout(before, tmp / "before")
        sources = tmp / "sources"
        params_new = _params(ROOT, tmp / "params-after.yaml", dtype, items, k)
        subprocess.run([sys.executable, "stages/prepare.py", "--params", str(params_new), "--out", str(sources)],
                       cwd=ROOT, check=True)
        n = sum(1 for _ in open(sources / "train.jsonl"))
        if n < items:
            raise SystemExit(f"the default tasks give {n} train items, fewer than --items {items}")
        result = {"items": items, "dtype": dtype, "k": k, "task": TASKS[0], "before_commit": before,
                  "load_average": os.getloadavg()}
        wall = _run(old, _params(old, tmp / "params-before.yaml", dtype, items, k), sources / "train.jsonl",
                    tmp / "raw-before", tmp / "before.json")
        result["before"] = {**_side(tmp / "raw-before", tmp / "before.json", wall), "load_average_after": os.getloadavg()}
        wall = _run(ROOT, params_new, sources / "train.jsonl", tmp / "raw-after", tmp / "after.json")
        result["after"] = {**_side(tmp / "raw-after", tmp / "after.json", wall), "load_average_after": os.getloadavg()}
    b, a = result["before"], result["after"]
    result["speedup_episodes_per_s"] = round(a["episodes_per_s"] / b["episodes_per_s"], 3)
    result["speedup_wall"] = round(b["wall_seconds"] / a["wall_seconds"], 3)
    result["targets"] = {"speedup >= 1.5": result["speedup_episodes_per_s"] >= 1.5,
                         "fix rate after >= before": (a["fix_rate"] or 0) >= (b["fix_rate"] or 0)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("speedup_episodes_per_s", "speedup_wall", "targets")}))


if __name__ == "__main__":
    typer.run(main)
