"""Search for the default run's tasks and generation levers (the record is docs/default-run-search.md).

Runs the real generate machinery (trial 1 -> verify -> reflect -> retry -> verify) on the train split of
each candidate with the real SmolLM2 and prints one JSON line per candidate: trial-1 accuracy, fix
rate, repeat rate, format failures, stop reasons, tokens and seconds. Nothing here touches a test split.

    python scripts/search_defaults.py --out bench/results/default_search.json [--dtype float32] [--only A,B]
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import typer

CHAIN = {"name": "rg/chain_sum", "options": {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 1}}
FAMILY = {"name": "rg/family_relationships", "options": {}}
FAMILY_MC = {"name": "rg/family_relationships", "options": {"choices": 4}}

CANDIDATES = {
    "A-chain-paper": ([CHAIN], {}),
    "B-chain-named": ([CHAIN], {"name_rejected": True}),
    "C-chain-named-sampled-k4": ([CHAIN], {"name_rejected": True, "retry_temperature": 0.7, "k": 4}),
    "G-chain-named-noprev-hot-k4": ([CHAIN], {"name_rejected": True, "use_previous_trial": False,
                                              "retry_temperature": 1.0, "k": 4}),
    "D-family-paper": ([FAMILY], {}),
    "F-family-named-sampled-k4": ([FAMILY], {"name_rejected": True, "retry_temperature": 0.7, "k": 4}),
    "H-family-named-noprev-hot-k4": ([FAMILY], {"name_rejected": True, "use_previous_trial": False,
                                                "retry_temperature": 1.0, "k": 4}),
    "I-familymc-paper": ([FAMILY_MC], {}),
    "J-familymc-named-sampled-k4": ([FAMILY_MC], {"name_rejected": True, "retry_temperature": 0.7, "k": 4}),
    "K-familymc-named-k2": ([FAMILY_MC], {"name_rejected": True}),
    "L-familymc-named-sampled-k2": ([FAMILY_MC], {"name_rejected": True, "retry_temperature": 0.7}),
    "M-chainmc-named-sampled-k4": ([{"name": "rg/chain_sum", "options": {**CHAIN["options"], "choices": 4}}],
                                   {"name_rejected": True, "retry_temperature": 0.7, "k": 4}),
}


def main(out: Path = Path("bench/results/default_search.json"), n: int = 48, dtype: str = "auto",
         only: str = "", max_new_trial: int = 96, max_new_reflection: int = 96) -> None:
    from reflectevo.backends.registry import make_backend
    from reflectevo.config.sections import GenerateConfig
    from reflectevo.config.presets import load_preset
    from reflectevo.config.params import read_params
    from reflectevo.diagnostics import episode_diagnostics
    from reflectevo.generation.run import generate
    from reflectevo.generation.keys import make_spec
    from reflectevo.models.fingerprint import model_fingerprint
    from reflectevo.tasks.registry import get_task

    _, preset = load_preset(read_params("params.yaml"), "smollm2-135m")
    preset = replace(preset, dtype=dtype)
    backend = make_backend("smollm2-135m", preset)
    results = json.loads(out.read_text()) if out.exists() else {}
    for name, (task_specs, levers) in CANDIDATES.items():
        if only and name.split("-")[0] not in only.split(","):
            continue
        items, tasks = [], {}
        for ts in task_specs:
            task = get_task(ts["name"], dict(ts["options"]))
            tasks[task.name] = task
            items += task.load("train", n, 0)
        cfg = GenerateConfig(max_new_tokens_trial=max_new_trial, max_new_tokens_reflection=max_new_reflection,
                             **levers)
        spec = make_spec(model_fingerprint("smollm2-135m", preset), preset.dtype, cfg)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            eps, stats = generate(items, tasks, lambda: backend, spec, Path(tmp), chunk_size=64, progress=False)
        secs = time.perf_counter() - t0
        d = episode_diagnostics(eps)
        o = d["overall"]
        results[name] = {"tasks": task_specs, "levers": levers, "n_items": len(items), "dtype": backend.dtype,
                         "seconds": round(secs, 1), "episodes_per_s": round(len(items) / secs, 3),
                         "max_new_tokens": [max_new_trial, max_new_reflection], **o}
        print(json.dumps({"candidate": name, "t1": o["trial1_correct"], "items": o["items"], "samples": o["samples"],
                          "fixes": o["fixes"], "fix_rate": o["fix_rate"], "repeat_rate": o["repeat_rate"],
                          "t2_fmt": o["trial2_format_failures"], "stops": o["stop_reasons"], "s": round(secs, 1)}),
              flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1) + "\n")
        _dump(Path(tempfile.gettempdir()) / f"episodes-{name}.jsonl", eps)


def _dump(path: Path, eps) -> None:
    with open(path, "w") as fh:
        for ep in eps:
            fh.write(json.dumps(ep) + "\n")


if __name__ == "__main__":
    typer.run(main)
