"""The paper's recipe at full scale on a CPU, through the real `dvc repro`: a dry run of the data path.

`configs/recipes/paper.yaml` with `-S model=scripted` (no model: completions from a recipe at ReflectEvo-460K's
lengths and rates, bench/results/scale.json: ~1,200 episodes/s), applied with DVC's own `-S` code to the params of a
throwaway copy of the project; the hub datasets replaced by local snapshots in each hub dataset's own schema
(tests/hub_fixtures.py), at the paper's item counts, read through the same loaders (`$REFLECTEVO_HUB_DIR`); ReflectEvo's
four test sets from ../shared/data. Then every stage of dvc.yaml in order with `dvc repro --single-item <stage>`, each
under GNU time (wall seconds, CPU seconds, peak RSS of the stage's whole process tree): prepare -> generate
(~460K reflection samples) -> curate (D+, D±, Dpref, the data card with the paper's statistics table) -> the train
stages (the scripted preset has no weights: each writes a "skipped" card, the reason recorded) -> evaluate (both
prompt baselines on the 2,000 test items; the settings listed as skipped) -> evolve summary -> report.

    nice -n 10 python bench/paper_dryrun.py                  # ~15-30 min on 2 cores
    python bench/paper_dryrun.py --scale 0.02 --out /tmp/x.json   # a quick rehearsal

Writes bench/results/paper-dryrun.json (commit, date, machine, per-stage time and memory, counts, the plan's
prediction for the same params next to what the run produced) and bench/results/paper-dryrun-card.md (the card).
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import typer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
OUT = ROOT / "bench/results/paper-dryrun.json"
CARD = ROOT / "bench/results/paper-dryrun-card.md"
SHARED_DATA = Path(os.environ.get("REFLECTEVO_DATA", ROOT.parent / "shared" / "data"))
TIME = shutil.which("time") or "/usr/bin/time"
COPY_EXCLUDE = ("metrics/", "plots/", "report/", "bench/", "tests/", "docs/", "demo/", "dvc.lock", "models/",
                "scripts/", ".ci/")

# rows per split of each hub stand-in: the real split sizes where the recipe uses the whole split (LogiQA 7,376,
# MATH 7,500, MBPP 374, the small BIG-bench tasks), else the real size capped at CAP (the recipe draws n_train)
CAP = 5000
BIGBENCH_TRAIN = {"strategyqa": 1832, "analytic_entailment": 54, "temporal_sequences": 800, "timedial": 2040,
                  "winowhy": 2290, "social_iqa": 1548, "social_support": 718, "causal_judgment": 152,
                  "cause_and_effect": 123, "sports_understanding": 789, "physical_intuition": 65,
                  "vitaminc_fact_verification": 43735}


def machine() -> str:
    from bench_plan import machine as m

    return m()


def commit() -> str:
    from bench_plan import commit as c

    return c()


def write_hub(root: Path, scale: float) -> dict[str, int]:
    """The hub snapshots, in each dataset's schema, question lengths from the paper's per-domain averages (words)."""
    from hub_fixtures import MATH_SIZES, write_snapshot

    from reflectevo import paper

    def n(x: int, cap: int = CAP) -> int:
        return max(1, round(min(x, cap) * scale))

    def words(task: str) -> int:
        return int(paper.domains()[paper.domain_of(task)]["avg_question"])

    rows: dict[str, int] = {}
    write_snapshot(root, "lucasmccabe/logiqa", {("default", "train"): n(7376, 7376)},   # all 7,376, uncapped
                   q_words={"default": words("logiqa")})
    rows["lucasmccabe/logiqa"] = n(7376, 7376)
    sizes = {(c, "train"): max(1, round(v * scale)) for c, v in MATH_SIZES.items()}   # all 7,500, uncapped
    write_snapshot(root, "EleutherAI/hendrycks_math", sizes, q_words=dict.fromkeys(MATH_SIZES, words("math")))
    rows["EleutherAI/hendrycks_math"] = sum(sizes.values())
    write_snapshot(root, "google-research-datasets/mbpp", {("full", "train"): n(374)}, q_words={"full": words("mbpp")})
    rows["google-research-datasets/mbpp"] = n(374)   # all 374
    bb = {(t, "train"): n(v) for t, v in BIGBENCH_TRAIN.items()}
    write_snapshot(root, "tasksource/bigbench", bb, q_words={t: words(f"bigbench/{t}") for t in BIGBENCH_TRAIN})
    rows["tasksource/bigbench"] = sum(bb.values())
    stories = max(1, round(600 * scale))   # ~11.5 questions each: ~6,900 of CoQA's 108,647 train questions
    write_snapshot(root, "stanfordnlp/coqa", {("default", "train"): stories},
                   q_words={"default": words("bigbench/coqa")})
    rows["stanfordnlp/coqa (stories)"] = stories
    sq = {(c, "test"): n(1500) for c in ("new_wiki", "nyt", "reddit", "amazon")}
    write_snapshot(root, "ludwigschmidt/squadshifts", sq, q_words=dict.fromkeys(("new_wiki", "nyt", "reddit", "amazon"),
                                                                                 words("bigbench/squad_shifts")))
    rows["ludwigschmidt/squadshifts"] = sum(sq.values())
    return rows


def copy_project(dst: Path) -> None:
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if f.startswith(COPY_EXCLUDE) or not (ROOT / f).is_file():
            continue
        (dst / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, dst / f)


def run_measured(cmd: list[str], cwd: Path, env: dict[str, str]) -> dict:
    stats = Path(tempfile.mkstemp(prefix="dryrun-time-")[1])
    t0 = time.perf_counter()
    proc = subprocess.run([TIME, "-f", "%M %U %S", "-o", str(stats), *cmd], cwd=cwd, env=env, capture_output=True,
                          text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    rss_kb, user, system = stats.read_text().split()[-3:]
    stats.unlink()
    return {"seconds": round(wall, 1), "cpu_s": round(float(user) + float(system), 1),
            "peak_rss_mb": round(int(rss_kb) / 1024, 1), "tail": (proc.stdout + proc.stderr).strip().splitlines()[-3:]}


def plan_vs_run(plan: dict, gen: dict, cur: dict) -> dict:
    return {"episodes": [plan["generate"]["episodes"]["value"], gen["items"]],
            "reflections": [plan["generate"]["phases"]["reflection"]["calls"]["value"], gen["reflections"]],
            "fixes": [round(plan["generate"]["expected_fixes"]["value"]), gen["trial2_correct"]],
            "dplus_train": [plan["curate"]["dplus_train"]["value"], cur["dplus_train"]],
            "dpm_train": [plan["curate"]["dpm_train"]["value"], cur["dpm_train"]],
            "dpref_train": [plan["curate"]["dpref_train"]["value"], cur["dpref_train"]]}


def main(scale: float = typer.Option(1.0, help="fraction of the paper's item counts (1 = full scale)"),
         workdir: Path = typer.Option(Path("/tmp/reflectevo-paper-dryrun")),
         out: Path = typer.Option(OUT), card: Path = typer.Option(CARD), keep: bool = False,
         plan_only: bool = typer.Option(False, help="recompute only the plan's prediction for the run in `out` "
                                                    "(same fixtures and params; the stages are not run)")) -> None:
    from reflectevo.datacard import domain_table
    from reflectevo.plan import build_plan
    from reflectevo.recipes import apply, load_recipe

    if workdir.exists():
        shutil.rmtree(workdir)
    proj, hub = workdir / "proj", workdir / "hub"
    proj.mkdir(parents=True)
    t0 = time.perf_counter()
    hub_rows = write_hub(hub, scale)
    fixtures_s = round(time.perf_counter() - t0, 1)
    copy_project(proj)
    recipe = load_recipe("paper")
    # the scripted preset cannot judge Dpref pairs by generating a verdict (curate.judge self): its likelihood
    # stand-in (a deterministic score) ranks them
    on_top = ["model=scripted", "curate.judge=likelihood"]
    if scale != 1.0:   # a rehearsal: the recipe's n_train scaled the same way
        tasks = [dict(t, n_train=max(1, round(t["n_train"] * scale))) if t.get("n_train") else t
                 for t in recipe.overrides["prepare.tasks"]]
        recipe = type(recipe)(recipe.name, recipe.path, {**recipe.overrides, "prepare.tasks": tasks}, recipe.lines)
    params = apply(proj / "params.yaml", recipe, on_top)          # validated, as `reflectevo recipe run` does
    sources_env = {"REFLECTEVO_HUB_DIR": str(hub), "REFLECTEVO_DATA": str(SHARED_DATA), "HF_HUB_OFFLINE": "1",
                   "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(workdir / "hf-datasets")}
    if plan_only:
        os.environ.update(sources_env)
        saved = json.loads(out.read_text())
        plan = build_plan(params, "params.yaml + recipe paper " + " ".join(f"-S {o}" for o in on_top))
        saved["plan_vs_run"] = plan_vs_run(plan, saved["generate"], saved["curate"])
        saved["plan_commit"] = commit()
        out.write_text(json.dumps(saved, indent=1) + "\n")
        print(json.dumps(saved["plan_vs_run"]))
        shutil.rmtree(workdir)
        return
    from dvc.utils.hydra import apply_overrides

    from reflectevo.recipes import overrides

    apply_overrides(proj / "params.yaml", overrides(recipe, on_top) + on_top)   # DVC's own -S code, as exp run
    env = {**os.environ, "PYTHONPATH": str(ROOT), **sources_env, "OMP_NUM_THREADS": "1", "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "dryrun",
           "GIT_AUTHOR_EMAIL": "dryrun@example.com", "GIT_COMMITTER_NAME": "dryrun",
           "GIT_COMMITTER_EMAIL": "dryrun@example.com", "TOKENIZERS_PARALLELISM": "false"}
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "dry run"]):
        subprocess.run(cmd, cwd=proj, env=env, check=True)
    dvc = [sys.executable, "-m", "dvc"]
    stages = subprocess.run([*dvc, "stage", "list", "--name-only"], cwd=proj, env=env, capture_output=True, text=True,
                            check=True).stdout.split()
    order = ["prepare", "generate", "curate", *[s for s in stages if s.startswith("train@")], "evaluate", "evolve",
             "report"]
    assert set(order) <= set(stages), (order, stages)
    measured: dict[str, dict] = {}
    for stage in order:
        measured[stage] = run_measured([*dvc, "repro", "--single-item", stage], proj, env)
        print(f"{stage}: {measured[stage]['seconds']} s, peak {measured[stage]['peak_rss_mb']} MB", flush=True)

    sources = json.loads((proj / "data/sources/card.json").read_text())["counts"]
    gen = json.loads((proj / "metrics/generate.json").read_text())
    cur = json.loads((proj / "metrics/curate.json").read_text())
    stats = json.loads((proj / "data/curated/stats.json").read_text())
    ev = json.loads((proj / "metrics/eval.json").read_text())
    trains = {s.split("@", 1)[1]: json.loads((proj / f"metrics/train/{s.split('@', 1)[1]}.json").read_text())
              for s in order if s.startswith("train@")}
    os.environ.update(sources_env)   # the plan sees the same sources
    plan = build_plan(params, "params.yaml + recipe paper " + " ".join(f"-S {o}" for o in on_top))
    shutil.copyfile(proj / "data/curated/README.md", card)
    result = {
        "what": "configs/recipes/paper.yaml with -S model=scripted -S curate.judge=likelihood through dvc repro (every stage, --single-item, in "
                "order) on hub stand-ins in each dataset's schema at the paper's item counts",
        "commit": commit(), "date": datetime.date.today().isoformat(), "machine": machine(), "scale": scale,
        "hub_fixture_rows": hub_rows, "fixtures_seconds": fixtures_s,
        "stages": {s: {k: v for k, v in m.items() if k != "tail"} for s, m in measured.items()},
        "total_seconds": round(sum(m["seconds"] for m in measured.values()), 1),
        "peak_rss_mb": max(m["peak_rss_mb"] for m in measured.values()),
        "prepare": {"train_items": sum(c["train"] for c in sources.values()),
                    "test_items": sum(c["test"] for c in sources.values()), "per_task": sources},
        "generate": {k: gen[k] for k in ("items", "trial1_correct", "reflections", "trial2_correct")},
        "curate": cur["counts"],
        "train": {s: {"trained": t.get("trained"), "status": t.get("status"), "reason": t.get("reason")}
                  for s, t in trains.items()},
        "evaluate": {"items": ev["overall"]["n"], "systems": sorted(ev["systems"]), "skipped": ev["skipped"],
                     "acc_t1": ev["overall"]["acc_t1"], "acc_t2": ev["overall"]["acc_t2"]},
        "data_card_domain_table": domain_table(stats["stats"]["per_task"]),
        "plan_vs_run": plan_vs_run(plan, gen, cur["counts"]),
        "plan_commit": commit(),
    }
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{out}: {result['total_seconds']} s in stages, peak {result['peak_rss_mb']} MB; "
          f"{gen['reflections']:,} reflections from {gen['items']:,} items")
    if not keep:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    typer.run(main)
