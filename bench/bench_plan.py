"""`reflectevo plan` against the committed default run: the plan of the committed params.yaml next to what the
run measured (metrics/generate.json, metrics/train/*.json, metrics/eval.json, metrics/curate.json), each figure
with its relative error -> bench/results/plan-default.json. The plan is held to 15% on episodes, calls and
tokens per generation phase, optimizer steps and evaluation calls (tests/test_plan.py checks this file and a
fresh plan against the committed metrics).

    python bench/bench_plan.py            # seconds (the packaged model's tokenizer is converted once)
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench/results/plan-default.json"


def machine() -> str:
    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), platform.processor() or "unknown CPU")
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()}-core {model} VM, {mem:.0f} GiB, Python {platform.python_version()}"


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    return out.stdout.strip() + ("+dirty" if dirty else "")


def main() -> None:
    from reflectevo.config.params import read_params
    from reflectevo.plan import TOLERANCE, build_plan, compare_run

    plan = build_plan(read_params(ROOT / "params.yaml"), "params.yaml")
    rows = compare_run(plan, ROOT / "metrics")
    checked = [r for r in rows if r["checked"]]
    result = {
        "what": "reflectevo plan for the committed params.yaml vs the committed default run (metrics/)",
        "commit": commit(), "date": datetime.date.today().isoformat(), "machine": machine(),
        "tolerance": TOLERANCE,
        "all_checked_within": all(r["within"] for r in checked),
        "worst_checked": max(checked, key=lambda r: r["relative_error"] or 0),
        "compare": rows,
        "plan": plan,
    }
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{OUT}: {sum(r['within'] for r in checked)}/{len(checked)} checked figures within {TOLERANCE:.0%}; "
          f"worst {result['worst_checked']['what']} {result['worst_checked']['relative_error']:.1%}")


if __name__ == "__main__":
    main()
