"""Scale benchmark: the data path from 4.6K to 460K episodes on one machine, in one run.

    .venv/bin/python bench/bench_scale.py                       # 4.6K, 46K, 460K (disk: ~60 GB free)
    .venv/bin/python bench/bench_scale.py --sizes 4600,46000     # the smaller sizes only
    .venv/bin/python bench/bench_scale.py --eval-items 2000 --workdir /big/disk/bench

Every step is the real stage script in its own process (peak RSS and CPU time from GNU time), with the scripted backend
(`models.scripted`: right/wrong at set rates, ReflectEvo-460K lengths) and the paper's budgets (512-token
trials and reflections, k = 3):

1. generate: items cloned from the default run's train items (each with its own id and question), the
   whole stage: prompts, backend, verifiers, keys, journal, shards -> episodes/s, peak RSS (a size whose
   run takes under a minute is run 5 times from scratch and the median run reported; `runs` lists all);
2. data/raw on disk vs the same episodes as today's JSONL (`jsonio.dumps` per line, counted, not written);
3. curate (judge: likelihood, scored by the scripted backend) -> seconds, peak RSS; per-episode cost
   relative to the smallest size (generate and curate);
4. `reflectevo convert --from reflectevo --kind raw` of as many ReflectEvo records (exported from the
   episodes first) -> seconds, peak RSS;
5. DVC with the project's cache link type: `dvc commit` of the stages' outputs, then a no-op
   `dvc status` and `dvc repro`, and whether data/raw is stored once (hardlinks to the cache);
6. (once) evaluate + report + `reflectevo metrics` over `--eval-items` test items x 7 systems.

Writes bench/results/scale.json (and keeps intermediate numbers there after each size).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import typer
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench/results/scale.json"

app = typer.Typer(add_completion=False)


def run(cmd: list[str], cwd: Path | None = None, env: dict | None = None) -> dict:
    """Run one command: wall seconds and its output tails."""
    t0 = time.perf_counter()
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(map(str, cmd))}\n{proc.stderr[-3000:]}")
    return {"seconds": round(wall, 2), "stdout": proc.stdout[-2000:], "stderr": proc.stderr[-2000:]}


TIME = shutil.which("time") or "/usr/bin/time"


def run_measured(cmd: list[str], cwd: Path | None = None) -> dict:
    """Like `run`, with the command's own peak RSS and CPU seconds, measured by GNU time: a child
    forked by this (large) process would inherit its memory high-water mark, `time`'s children do not."""
    stats = Path(tempfile.mkstemp(prefix="bench-time-")[1])
    t0 = time.perf_counter()
    proc = subprocess.run([TIME, "-f", "%M %U %S", "-o", str(stats), *map(str, cmd)], cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(map(str, cmd))}\n{proc.stderr[-3000:]}")
    rss_kb, user, system = stats.read_text().split()[-3:]
    stats.unlink()
    return {"seconds": round(wall, 2), "cpu_s": round(float(user) + float(system), 2),
            "peak_rss_mb": round(int(rss_kb) / 1024, 1)}


def du(path: Path) -> int:
    """Bytes on disk under `path`, a hardlinked inode counted once (as `du` does)."""
    seen, total = set(), 0
    for p in [path] if path.is_file() else path.rglob("*"):
        if p.is_file() and not p.is_symlink():
            st = p.stat()
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


BASE_ITEMS = ROOT / "data/sources/train.jsonl"


def make_sources(n: int, dst: Path) -> None:
    from reflectevo.jsonio import iter_jsonl, write_jsonl

    if not BASE_ITEMS.exists():
        raise SystemExit(f"needs {BASE_ITEMS} (dvc repro prepare), or pass --base-items")
    base = list(iter_jsonl(BASE_ITEMS))

    def rows():
        for i in range(n):
            r = dict(base[i % len(base)])
            r["id"] = f"{r['id']}-x{i}"
            r["question"] = f"{r['question']} (case {i})"
            yield r

    write_jsonl(dst, rows())


def make_params(dst: Path, n_eval: int = 0) -> None:
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["model"] = "scripted"
    p["generate"].update(max_new_tokens_trial=512, max_new_tokens_reflection=512, k=3)   # the paper's budgets
    p["evaluate"].update(max_new_tokens_trial=512, max_new_tokens_reflection=512, limit=n_eval)
    p["curate"]["judge"] = "likelihood"
    dst.write_text(yaml.safe_dump(p, sort_keys=False))


def jsonl_bytes(raw: Path) -> int:
    from reflectevo.jsonio import dumps
    from reflectevo.episodes.shards import iter_episodes

    return sum(len(dumps(ep).encode("utf-8")) + 1 for ep in iter_episodes(raw))


def export_theirs(raw: Path, dst: Path) -> int:
    from reflectevo.compat.raw import episode_to_raw
    from reflectevo.jsonio import write_jsonl
    from reflectevo.episodes.shards import iter_episodes

    return write_jsonl(dst, (episode_to_raw(ep, w) for w, ep in iter_episodes(raw, where=True)))


DVC_YAML = """stages:
  generate:
    cmd: python {root}/stages/generate.py --params params.yaml --sources sources/train.jsonl --out data/raw --summary gen.json --no-progress
    deps: [sources/train.jsonl]
    params: [model, generate]
    outs:
      - data/raw:
          persist: true
  curate:
    cmd: python {root}/stages/curate.py --params params.yaml --raw data/raw --out data/curated --metrics cur.json
    deps: [data/raw]
    params: [curate]
    outs: [data/curated]
"""


def dvc_checks(work: Path) -> dict:
    """A DVC project around the bench's outputs: commit them (hashing + linking into the cache), then a
    no-op status and repro; how data/raw is stored."""
    dvc = [sys.executable, "-m", "dvc"]
    if not (work / ".dvc").exists():
        subprocess.run(["git", "init", "-q"], cwd=work, check=True)
        run([*dvc, "init", "-q"], cwd=work)
        shutil.copy(ROOT / ".dvc/config", work / ".dvc/config")
        cfg = (work / ".dvc/config").read_text().replace("html_template = ../reflectevo", f"html_template = {ROOT}/reflectevo")
        (work / ".dvc/config").write_text(cfg)
    (work / "dvc.yaml").write_text(DVC_YAML.format(root=ROOT))
    env = {"DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b",
           "GIT_COMMITTER_EMAIL": "b@b"}
    commit = run([*dvc, "commit", "-f", "-q"], cwd=work, env=env)
    status = run([*dvc, "status"], cwd=work, env=env)
    repro = run([*dvc, "repro"], cwd=work, env=env)
    shards = sorted((work / "data/raw").glob("episodes-*"))
    links = sorted({p.stat().st_nlink for p in shards})
    raw_bytes = sum(p.stat().st_size for p in shards)
    return {"cache_type": _cache_type(), "commit_s": commit["seconds"],
            "noop_status_s": status["seconds"], "noop_repro_s": repro["seconds"],
            "status_output": status["stdout"].strip()[-200:], "repro_output": repro["stdout"].strip()[-300:],
            "raw_shard_link_counts": links, "raw_is_symlink": any(p.is_symlink() for p in shards),
            "raw_bytes": raw_bytes, "raw_plus_whole_cache_on_disk_bytes": du(work / "data/raw") + du(work / ".dvc/cache")
            - du_shared(work), "stored_once": links == [2] or any(p.is_symlink() for p in shards)}


def _cache_type() -> str:
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / ".dvc/config")
    return cfg.get("cache", "type", fallback="reflink,copy (DVC default)").strip('"')


def du_shared(work: Path) -> int:
    """Bytes counted by both du(data/raw) and du(.dvc/cache) (hardlinks): subtracted once."""
    raw = {(p.stat().st_dev, p.stat().st_ino): p.stat().st_blocks * 512 for p in (work / "data/raw").rglob("*")
           if p.is_file() and not p.is_symlink()}
    cache = {(p.stat().st_dev, p.stat().st_ino) for p in (work / ".dvc/cache").rglob("*") if p.is_file()}
    return sum(b for k, b in raw.items() if k in cache)


REPEATS = 5          # generate runs at a size whose first run is short (median reported)
SHORT_RUN_S = 60.0


def one_size(n: int, base: Path, keep: bool, res: dict | None = None, save=lambda: None) -> dict:
    """Every step for `n` episodes into `res` (saved after each step: a run cut short keeps what it measured)."""
    work = base / f"n{n}"
    if work.exists():
        shutil.rmtree(work)
    (work / "sources").mkdir(parents=True)
    make_sources(n, work / "sources/train.jsonl")
    make_params(work / "params.yaml")
    py = sys.executable
    res = {} if res is None else res
    res["episodes"] = n
    cmd = [py, ROOT / "stages/generate.py", "--params", "params.yaml", "--sources", "sources/train.jsonl",
           "--out", "data/raw", "--summary", "gen.json", "--no-progress"]
    runs = [run_measured(cmd, cwd=work)]
    # a run of seconds is mostly the fixed start (interpreter, imports) and moves with whatever else the
    # machine does: repeat it from scratch and take the median run (every run is recorded)
    while runs[0]["seconds"] < SHORT_RUN_S and len(runs) < REPEATS:
        shutil.rmtree(work / "data/raw")
        runs.append(run_measured(cmd, cwd=work))
    g = dict(sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2])
    if len(runs) > 1:
        g["runs"] = runs
    summ = json.loads((work / "gen.json").read_text())
    res["generate"] = {**g, "episodes_per_s": round(n / g["seconds"], 1),
                       "episodes_per_cpu_s": round(n / g["cpu_s"], 1),
                       "ms_per_episode": round(1000 * g["seconds"] / n, 3),
                       "cpu_ms_per_episode": round(1000 * g["cpu_s"] / n, 3),
                       "generation_only_s": summ["run"]["seconds"], "trial1_correct": summ["trial1_correct"],
                       "reflections": summ["reflections"], "trial2_correct": summ["trial2_correct"],
                       "mean_new_tokens": {k: v["mean_new"] for k, v in summ["diagnostics"]["overall"]["tokens"].items()},
                       "mean_prompt_tokens": {k: v["mean_prompt"] for k, v in summ["diagnostics"]["overall"]["tokens"].items()}}
    save()
    raw = work / "data/raw"
    shards = sorted(raw.glob("episodes-*"))
    t0 = time.perf_counter()
    jl = jsonl_bytes(raw)
    res["raw"] = {"shards": [p.name for p in shards], "parquet_bytes": sum(p.stat().st_size for p in shards),
                  "jsonl_bytes_same_episodes": jl, "count_s": round(time.perf_counter() - t0, 1)}
    res["raw"]["ratio_vs_jsonl"] = round(res["raw"]["parquet_bytes"] / jl, 4)
    save()
    c = run_measured([py, ROOT / "stages/curate.py", "--params", "params.yaml", "--raw", "data/raw", "--out",
                      "data/curated", "--metrics", "cur.json"], cwd=work)
    cur = json.loads((work / "cur.json").read_text())
    res["curate"] = {**c, "ms_per_episode": round(1000 * c["seconds"] / n, 3),
                     "cpu_ms_per_episode": round(1000 * c["cpu_s"] / n, 3), "counts": cur["counts"],
                     "drops": cur["drops"], "curated_bytes": du(work / "data/curated")}
    save()
    theirs = base / f"theirs-{n}.jsonl"
    export_theirs(raw, theirs)
    conv = run_measured([py, "-m", "reflectevo.cli", "convert", "--from", "reflectevo", "--kind", "raw", theirs,
                         base / f"ours-{n}.jsonl", "--task", "logiqa"], cwd=work)
    res["convert"] = {**conv, "records": n, "input_bytes": theirs.stat().st_size}
    theirs.unlink()
    (base / f"ours-{n}.jsonl").unlink()
    save()
    res["dvc"] = dvc_checks(work)
    save()
    if not keep:
        shutil.rmtree(work)
    return res


def eval_report(n_items: int, base: Path) -> dict:
    """evaluate (7 systems: 2 prompt baselines + 5 settings, scripted backend) + report + metrics."""
    work = base / "eval"
    if work.exists():
        shutil.rmtree(work)
    (work / "sources").mkdir(parents=True)
    make_sources(n_items, work / "sources/test.jsonl")
    make_params(work / "params.yaml", n_eval=n_items)
    from reflectevo.settings import registry

    for setting, roles in ((n, s.roles) for n, s in registry().settings.items()):   # "trained" cards on the scripted base: adapters are not loaded
        d = work / "models" / setting
        d.mkdir(parents=True)
        (d / "model_card.json").write_text(json.dumps({"status": "trained", "base": {"preset": "scripted"},
                                                       "adapters": {r: r for r in roles}}))
    py = sys.executable
    ev = run_measured([py, ROOT / "stages/evaluate.py", "--params", "params.yaml", "--sources", "sources/test.jsonl",
                       "--models", "models", "--predictions", "eval/predictions.jsonl", "--metrics", "eval.json",
                       "--plots", "plots"], cwd=work)
    systems = json.loads((work / "eval.json").read_text())["systems"]
    stats = work / "stats.json"
    stats.write_text(json.dumps({}))
    rep = run_measured([py, ROOT / "stages/report.py", "--metrics", "eval.json", "--stats", "stats.json",
                        "--predictions", "eval/predictions.jsonl", "--plots", "plots", "--out", "report/index.html"],
                       cwd=work)
    met = run_measured([py, "-m", "reflectevo.cli", "metrics", "eval/predictions.jsonl"], cwd=work)
    out = {"items": n_items, "systems": sorted(systems), "evaluate": ev, "report": rep, "metrics_cli": met,
           "predictions_bytes": (work / "eval/predictions.jsonl").stat().st_size}
    shutil.rmtree(work)
    return out


@app.command()
def main(sizes: str = "4600,46000,460000", eval_items: int = 2000, workdir: Path = Path("/tmp/reflectevo-bench-scale"),
         keep: bool = False, skip_eval: bool = False,
         base_items: Path = typer.Option(BASE_ITEMS, help="train items to clone (the default run's)")) -> None:
    global BASE_ITEMS
    BASE_ITEMS = base_items
    workdir.mkdir(parents=True, exist_ok=True)
    result: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
                    "recipe": "models.scripted (params.yaml), k=3, max_new_tokens 512/512, curate.judge likelihood",
                    "sizes": {}}
    result["started"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    t_start = time.time()
    if not skip_eval:   # first: minutes, and independent of the sizes
        typer.echo(f"[{time.strftime('%H:%M:%S')}] evaluate/report over {eval_items} items x 7 systems ...", err=True)
        result["eval_report"] = eval_report(eval_items, workdir)
        _write(result)
    for n in [int(x) for x in sizes.split(",") if x]:
        typer.echo(f"[{time.strftime('%H:%M:%S')}] {n} episodes ...", err=True)
        result["sizes"][str(n)] = {}
        one_size(n, workdir, keep, result["sizes"][str(n)], save=lambda: _write(result))
        result["targets"] = targets(result)
        _write(result)
    result["targets"] = targets(result)
    result["bench_seconds"] = round(time.time() - t_start, 1)
    _write(result)
    typer.echo(json.dumps(result["targets"], indent=1))


def targets(r: dict) -> dict:
    """The scale targets side by side (a size cut short shows what it measured)."""
    s = r["sizes"]
    ns = sorted(s, key=int)
    if not ns:
        return {}

    def col(*keys):
        out = {}
        for n in ns:
            v = s[n]
            for k in keys:
                v = v.get(k) if isinstance(v, dict) else None
            if v is not None:
                out[n] = v
        return out

    t: dict = {"sizes": [int(n) for n in ns], "load_average_at_end": round(os.getloadavg()[0], 1)}
    t["generate_episodes_per_s (>= 1000)"] = col("generate", "episodes_per_s")
    t["generate_episodes_per_cpu_s"] = col("generate", "episodes_per_cpu_s")
    t["generate_peak_rss_mb (<= 2048)"] = col("generate", "peak_rss_mb")
    t["curate_s (<= 600 at 460K)"] = col("curate", "seconds")
    t["curate_cpu_s"] = col("curate", "cpu_s")
    t["curate_peak_rss_mb (<= 2048)"] = col("curate", "peak_rss_mb")
    ratio = {}
    lo = ns[0]
    for stage in ("generate", "curate"):
        for kind in ("ms_per_episode", "cpu_ms_per_episode"):
            vals = col(stage, kind)
            if lo in vals and len(vals) > 1:
                hi = max(vals, key=int)
                ratio[f"{stage} {kind} {hi}/{lo} (<= 1.3)"] = round(vals[hi] / vals[lo], 3)
    t["per_episode_cost_ratio"] = ratio
    t["raw_parquet_vs_jsonl (<= 0.25)"] = col("raw", "ratio_vs_jsonl")
    t["raw_parquet_bytes"] = col("raw", "parquet_bytes")
    t["raw_stored_once"] = col("dvc", "stored_once")
    t["convert_s (<= 600 at 460K)"] = col("convert", "seconds")
    t["convert_peak_rss_mb"] = col("convert", "peak_rss_mb")
    t["noop_dvc_status_s (<= 3)"] = col("dvc", "noop_status_s")
    t["noop_dvc_repro_s (<= 3)"] = col("dvc", "noop_repro_s")
    if "eval_report" in r:
        e = r["eval_report"]
        t[f"eval_report_peak_rss_mb (<= 2048; {e['items']} items x {len(e['systems'])} systems)"] = {
            "evaluate": e["evaluate"]["peak_rss_mb"], "report": e["report"]["peak_rss_mb"],
            "metrics_cli": e["metrics_cli"]["peak_rss_mb"]}
    return t


def _write(result: dict) -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    app()
