"""A fresh clone's `make repro`, timed stage by stage, for two versions of the project in one run.

    .venv/bin/python bench/bench_repro.py                            # old = bd526f1, new = HEAD, fresh venvs
    .venv/bin/python bench/bench_repro.py --variant new=worktree     # this working tree (uncommitted changes too)
    .venv/bin/python bench/bench_repro.py --variant new=HEAD --set models.smollm2-135m.dtype=float32   # fp32 only
    .venv/bin/python bench/bench_repro.py --python .venv/bin/python --set model=tiny-random \\
        --set prepare.tasks.0.n_train=8 --set prepare.tasks.0.n_test=6 --out bench/results/repro-smoke.json

Each variant (`name=ref`, ref a commit or `worktree`) is exported into its own temporary folder, made a git
repository (DVC needs one), and run as a new user runs it:
- install: `make install` into a fresh `.venv` there (timed; pip's download cache is the machine's), unless
  `--python` names an existing interpreter whose packages serve every variant (the install is then not timed,
  and PYTHONPATH makes each copy's own code win);
- the pipeline: `make repro` (or, with `--python`, `dvc repro` and, where the version has it, `reflectevo
  summary`), its output read line by line as it comes: each `Running stage '<name>'` line starts a stage,
  which lasts until the next one starts (or the run ends), so the stage times add up to the run's wall time.
- a fresh model cache (`REFLECTEVO_CACHE`) per variant unless `--keep-cache`: a new user converts the
  packaged model once, inside the generate stage.
`--set key=value` edits params.yaml of every variant alike (dotted keys, list indices, YAML values).
Writes one JSON (default bench/results/repro.json): the machine, date, each variant's commit, install time,
stage times and total, and the stage-by-stage differences. Timings mean something only on an idle machine.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import typer
import yaml

ROOT = Path(__file__).resolve().parents[1]
OLD = "bd526f1"     # the default run before it was sized for 15 minutes (64 train / 100 test items, 10 SFT / 8 DPO steps)
STAGE = re.compile(r"Running stage '([^']+)'")


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def export(ref: str, dst: Path) -> str:
    """The project at `ref` (a commit, or `worktree`: tracked and untracked-but-not-ignored files as they are
    now) in `dst`, made a fresh git repository; returns the commit it came from."""
    dst.mkdir(parents=True)
    if ref == "worktree":
        files = git("ls-files", "-co", "--exclude-standard", "-z").split("\0")
        for f in filter(None, files):
            src = ROOT / f
            if src.is_file():
                (dst / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst / f)
        commit = git("rev-parse", "HEAD") + ("+changes" if git("status", "--porcelain") else "")
    else:
        commit = git("rev-parse", ref)
        archive = subprocess.run(["git", "archive", commit], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dst)], input=archive, check=True)
    env = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@localhost"}
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "bench copy"]):
        subprocess.run(["git", *cmd], cwd=dst, check=True, env=env, capture_output=True)
    return commit


def set_param(params: dict[str, Any], dotted: str) -> None:
    """`a.b.0.c=value` (value parsed as YAML) into `params`."""
    key, _, raw = dotted.partition("=")
    if not raw and "=" not in dotted:
        raise typer.BadParameter(f"--set {dotted}: expected key=value")
    parts = key.split(".")
    node: Any = params
    for p in parts[:-1]:
        node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
    last = parts[-1]
    value = yaml.safe_load(raw)
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def apply_sets(project: Path, sets: list[str]) -> None:
    if not sets:
        return
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for s in sets:
        set_param(params, s)
    path.write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    subprocess.run(["git", "commit", "-qam", "bench params"], cwd=project, check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost",
                        "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@localhost"})


def timed_run(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> dict[str, Any]:
    """Run `cmd`, logging its output with the time of each line; split the wall time at DVC's stage lines."""
    t0 = time.perf_counter()
    marks: list[tuple[str, float]] = []
    with open(log, "w", encoding="utf-8") as fh:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                bufsize=1, errors="replace")
        assert proc.stdout is not None
        for line in proc.stdout:
            now = time.perf_counter() - t0
            fh.write(f"[{now:8.2f}] {line}")
            fh.flush()
            m = STAGE.search(line)
            if m:
                marks.append((m.group(1), now))
        rc = proc.wait()
    total = time.perf_counter() - t0
    stages = {}
    for i, (name, start) in enumerate(marks):
        end = marks[i + 1][1] if i + 1 < len(marks) else total
        stages[name] = round(end - start, 1)
    before = marks[0][1] if marks else total
    return {"rc": rc, "seconds": round(total, 1), "before_first_stage": round(before, 1), "stages": stages}


def run_variant(name: str, ref: str, work: Path, sets: list[str], python: str | None, keep_cache: bool,
                nice: bool) -> dict[str, Any]:
    project = work / name
    commit = export(ref, project)
    apply_sets(project, sets)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONUNBUFFERED": "1"}   # stage lines arrive as they are printed
    env.pop("VIRTUAL_ENV", None)
    if not keep_cache:
        env["REFLECTEVO_CACHE"] = str(work / f"cache-{name}")
    prefix = ["nice", "-n", "10"] if nice else []
    out: dict[str, Any] = {"ref": ref, "commit": commit, "log": str(work / f"{name}.log")}
    if python is None:   # a new user: make install, then make repro
        py = shutil.which("python3.11") or sys.executable
        t0 = time.perf_counter()
        res = subprocess.run([*prefix, "make", "install", f"PYTHON={py}"], cwd=project, env=env, capture_output=True,
                             text=True)
        out["install_s"] = round(time.perf_counter() - t0, 1)
        if res.returncode != 0:
            out["install_error"] = res.stderr[-2000:]
            return out
        out["repro"] = timed_run([*prefix, "make", "repro"], project, env, work / f"{name}.log")
    else:                # the given interpreter's packages; this copy's code first on the path
        env["PYTHONPATH"] = str(project)
        env["PATH"] = f"{Path(python).parent}:{env['PATH']}"
        out["install_s"] = None
        has_summary = (project / "reflectevo/cli/summary.py").exists()
        script = "dvc repro" + (" && python -m reflectevo.cli summary" if has_summary else "")
        out["repro"] = timed_run([*prefix, "bash", "-c", script], project, env, work / f"{name}.log")
    out["total_s"] = round((out["install_s"] or 0) + out["repro"]["seconds"], 1)
    return out


def machine() -> dict[str, Any]:
    cpu = ""
    flags: set[str] = set()
    try:
        text = Path("/proc/cpuinfo").read_text()
        cpu = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "")
        flags = set(next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []))
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
            "python": platform.python_version(), "load_avg_at_start": os.getloadavg()[0]}


def compare(variants: dict[str, Any]) -> dict[str, Any]:
    """Per stage (and in total): each variant's seconds, when two variants ran."""
    names = list(variants)
    if len(names) != 2 or any("repro" not in variants[n] for n in names):
        return {}
    a, b = (variants[n]["repro"]["stages"] for n in names)
    rows = {s: {names[0]: a.get(s), names[1]: b.get(s)} for s in dict.fromkeys([*a, *b])}
    rows["install"] = {n: variants[n]["install_s"] for n in names}
    rows["total"] = {n: variants[n]["total_s"] for n in names}
    return rows


def main(variant: list[str] = typer.Option(None, "--variant", help=f"name=ref (a commit or worktree); default "
                                           f"old={OLD} new=HEAD"),
         set_: list[str] = typer.Option(None, "--set", help="params.yaml key=value for every variant"),
         python: str = typer.Option(None, help="reuse this interpreter's packages (no install is timed)"),
         out: Path = typer.Option(ROOT / "bench/results/repro.json"),
         work: Path = typer.Option(None, help="where the copies go (default: a temporary folder, removed)"),
         keep_cache: bool = typer.Option(False, help="use the user's model cache (no conversion in the run)"),
         nice: bool = typer.Option(False, help="run at lower priority (timings are then not the machine's)")) -> None:
    pairs = [v.split("=", 1) for v in (variant or [f"old={OLD}", "new=HEAD"])]
    tmp = Path(tempfile.mkdtemp(prefix="bench-repro-")) if work is None else work
    tmp.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                              "machine": machine(), "bench_commit": git("rev-parse", "HEAD"),
                              "sets": list(set_ or []), "python": python, "fresh_model_cache": not keep_cache,
                              "variants": {}}
    try:
        for name, ref in pairs:
            typer.echo(f"bench_repro: {name} = {ref} ...", err=True)
            r = run_variant(name, ref, tmp, list(set_ or []), python, keep_cache, nice)
            result["variants"][name] = r
            rep = r.get("repro", {})
            typer.echo(f"bench_repro: {name}: install {r.get('install_s')} s, repro {rep.get('seconds')} s "
                       f"(rc {rep.get('rc')}), stages {rep.get('stages')}", err=True)
        result["compare"] = compare(result["variants"])
    finally:
        if work is None:
            for name, _ in pairs:   # keep the logs beside the JSON, drop the copies
                log = tmp / f"{name}.log"
                if log.exists():
                    dst = out.with_name(f"{out.stem}-{name}.log")
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(log, dst)
                    result["variants"].get(name, {})["log"] = str(dst.relative_to(ROOT) if dst.is_relative_to(ROOT)
                                                                 else dst)
            shutil.rmtree(tmp, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    typer.echo(f"bench_repro: {out}", err=True)
    if any(v.get("repro", {}).get("rc") != 0 for v in result["variants"].values()):
        raise typer.Exit(1)


if __name__ == "__main__":
    typer.run(main)
