"""Run the CPU benchmarks one after another (`make bench`), each in its own process, each writing its JSON
under bench/results/. Timings are only comparable on an otherwise idle machine: run nothing else meanwhile.

    .venv/bin/python bench/run_all.py              # the quick ones (minutes)
    .venv/bin/python bench/run_all.py scale rl     # the named ones
    .venv/bin/python bench/run_all.py --all        # every CPU benchmark (hours on 2 cores)
    .venv/bin/python bench/run_all.py --list

GPU-only scripts (bench/gpu_*.py) are not run here.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import typer

ROOT = Path(__file__).resolve().parents[1]

# name: (script, arguments, quick?, what it measures and roughly how long it takes on 2 cores)
BENCHES: dict[str, tuple[str, list[str], bool, str]] = {
    "verify": ("bench_verify.py", [], True, "verifier throughput: sandboxed MBPP checks/s, MATH answers/s (~2 min)"),
    "formats": ("bench_formats.py", [], True, "data/raw formats: size, write/read speed, loading (~2 min)"),
    "memory": ("bench_memory.py", [], False, "peak RSS of one training step per setting and method (~15 min)"),
    "train": ("bench_train.py", [], False, "one-stage SFT steps/s vs a plain TRL script (~10 min)"),
    "rl": ("bench_rl.py", [], False, "GRPO steps/s vs a plain TRL GRPOTrainer script (~15 min)"),
    "generate": ("bench_generate.py", [], False, "generate-stage throughput, batching, workers (~30 min)"),
    "mechanics": ("bench_mechanics.py", [], False, "generate before/after the trial-mechanics change (~40 min)"),
    "scale": ("bench_scale.py", [], False, "the data path at 4.6K / 46K / 460K episodes (~30 min, ~60 GB disk)"),
    "rl_curve": ("rl_curve.py", [], False, "grpo_reflect_retry fix rate before/after 60 min of training (~75 min)"),
}


def main(names: list[str] = typer.Argument(None, help="benchmarks to run (default: the quick ones)"),
         all_: bool = typer.Option(False, "--all", help="every CPU benchmark"),
         list_: bool = typer.Option(False, "--list", help="list them and exit")) -> None:
    if list_:
        for name, (script, _, quick, what) in BENCHES.items():
            typer.echo(f"{name:10} {'quick' if quick else '     '}  bench/{script}: {what}")
        return
    chosen = list(BENCHES) if all_ else (names or [n for n, b in BENCHES.items() if b[2]])
    bad = [n for n in chosen if n not in BENCHES]
    if bad:
        typer.echo(f"error: unknown benchmark {bad[0]!r}; choose from {', '.join(BENCHES)}", err=True)
        raise typer.Exit(2)
    failed = []
    for name in chosen:
        script, args, _, what = BENCHES[name]
        typer.echo(f"== {name}: {what}")
        t0 = time.perf_counter()
        rc = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], cwd=ROOT).returncode
        typer.echo(f"== {name}: exit {rc}, {time.perf_counter() - t0:.0f} s")
        if rc:
            failed.append(name)
    if failed:
        typer.echo(f"failed: {', '.join(failed)}", err=True)
        raise typer.Exit(1)


if __name__ == "__main__":
    typer.run(main)
