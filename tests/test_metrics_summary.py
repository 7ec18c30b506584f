"""The flat headline metrics DVC declares (metrics/headline/), and that `dvc metrics diff` fits a terminal."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from reflectevo.metrics_summary import curate_headline, eval_headline, train_headline

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ("one_stage", "two_stage", "dpo_pm", "dpo_pref", "sft_qa")
RL_SETTINGS = ("grpo_one_stage", "grpo_reflect_retry", "rloo")   # newer than the committed run: off by default


def committed(name: str) -> dict:
    return json.loads((ROOT / "metrics" / name).read_text())


def headlines(eval_full: dict, curate_full: dict, train_full: dict[str, dict]) -> dict[str, dict]:
    """metrics/headline/<...>.json -> content, as the stages write them."""
    out = {"metrics/headline/eval.json": eval_headline(eval_full),
           "metrics/headline/curate.json": curate_headline(curate_full)}
    for s, full in train_full.items():
        out[f"metrics/headline/train/{s}.json"] = train_headline(full)
    return out


def _numbers(full: dict) -> dict[str, float]:
    """Every Acc@t1 / Acc@t2 / Δ number of a full eval file, keyed as the headline keys them (per task
    only when there are several tasks), and each overall McNemar p-value against base_reflect."""
    out = {f"{s}.{t}.{k}": b[k] for s, e in full["systems"].items()
           for t, b in {**(e["per_task"] if len(e["per_task"]) > 1 else {}), "overall": e["overall"]}.items()
           for k in ("acc_t1", "acc_t2", "delta") if isinstance(b.get(k), (int, float))}
    out.update({f"{s}.overall.p_vs_base_reflect": e["overall"]["vs_base_reflect"]["p"]
                for s, e in full["systems"].items() if "vs_base_reflect" in e["overall"]})
    return out


def test_eval_headline_is_flat_table2_numbers():
    full = committed("eval.json")
    h = eval_headline(full)
    assert h == _numbers(full) and h  # every number, flat, nothing else
    assert h["base_reflect.overall.acc_t2"] == full["systems"]["base_reflect"]["overall"]["acc_t2"]
    task = min(full["systems"]["base_noreflect"]["per_task"])
    if len(full["systems"]["base_noreflect"]["per_task"]) > 1:
        assert h[f"base_noreflect.{task}.delta"] == full["systems"]["base_noreflect"]["per_task"][task]["delta"]
    if "sft_qa" in full["systems"]:  # Acc@t1 only: its null Acc@t2 and Δ are left out
        assert "sft_qa.overall.acc_t1" in h and "sft_qa.overall.acc_t2" not in h and "sft_qa.overall.delta" not in h
    # the McNemar p-value against base_reflect (overall only), where the full file has one
    full["systems"]["base_noreflect"]["overall"]["vs_base_reflect"] = {"n": 4, "b": 2, "c": 0, "p": 0.5}
    full["systems"]["base_noreflect"]["per_task"][task]["vs_base_reflect"] = {"n": 2, "b": 1, "c": 0, "p": 1.0}
    h = eval_headline(full)
    assert h["base_noreflect.overall.p_vs_base_reflect"] == 0.5 and f"base_noreflect.{task}.p_vs_base_reflect" not in h
    # a file from before `systems` existed
    old = {"system": "base_reflect", "overall": {"acc_t1": 0.5, "acc_t2": 0.75, "delta": 0.25, "n": 4},
           "per_task": {"rg/x": {"acc_t1": 0.5, "acc_t2": None}, "rg/y": {"acc_t1": 0.25}}}
    assert eval_headline(old) == {"base_reflect.overall.acc_t1": 0.5, "base_reflect.overall.acc_t2": 0.75,
                                  "base_reflect.overall.delta": 0.25, "base_reflect.rg/x.acc_t1": 0.5,
                                  "base_reflect.rg/y.acc_t1": 0.25}
    # one task: its block would repeat `overall`, so only `overall` is listed
    del old["per_task"]["rg/y"]
    assert "base_reflect.rg/x.acc_t1" not in eval_headline(old)


def test_curate_and_train_headlines():
    assert curate_headline(committed("curate.json")) == committed("curate.json")["counts"]
    assert train_headline({"setting": "one_stage", "trained": False, "reason": "D+ is empty"}) == \
        {"status": "no training data"}
    sft = {"setting": "sft_qa", "trained": True, "answerer": {"steps": 38, "train_loss": 0.4597, "eval_loss": None}}
    assert train_headline(sft) == {"status": "trained", "train_loss": 0.4597}
    two = {"setting": "two_stage", "trained": True, "reflector": {"train_loss": 1.5, "steps": 3},
           "corrector": {"train_loss": 0.25, "steps": 3}}
    assert train_headline(two) == {"status": "trained", "reflector.train_loss": 1.5, "corrector.train_loss": 0.25}
    for s in SETTINGS:  # the committed run's files
        full = committed(f"train/{s}.json")
        assert train_headline(full)["status"] == ("trained" if full["trained"] else "no training data")


def test_dvc_yaml_declares_only_the_headlines():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]

    def paths(entries):
        return [next(iter(e)) if isinstance(e, dict) else e for e in entries or []]

    declared = {name: paths(st.get("metrics") or st.get("do", {}).get("metrics")) for name, st in stages.items()}
    assert declared == {"prepare": [], "generate": [], "curate": ["metrics/headline/curate.json"],
                        "train": ["metrics/headline/train/${key}.json"], "evaluate": ["metrics/headline/eval.json"],
                        "evolve_generate": [], "evolve_curate": [], "evolve_train": [], "evolve_evaluate": [],
                        "evolve": ["metrics/headline/evolve.json"], "report": []}
    outs = {name: st.get("outs") or st.get("do", {}).get("outs") for name, st in stages.items()}
    for name, full in (("generate", "metrics/generate.json"), ("curate", "metrics/curate.json"),
                       ("train", "metrics/train/${key}.json"), ("evaluate", "metrics/eval.json"),
                       ("evolve", "metrics/evolve.json")):
        entry = next(e for e in outs[name] if isinstance(e, dict) and full in e)
        assert entry[full] == {"cache": False}, name  # git-tracked, plain
    assert "--headline metrics/headline/train/${key}.json" in stages["train"]["do"]["cmd"]
    assert "metrics/eval.json" in stages["report"]["deps"]  # the report reads the full file


def _sh(*args, cwd):
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "ci", "GIT_AUTHOR_EMAIL": "ci@example.com", "GIT_COMMITTER_NAME": "ci",
           "GIT_COMMITTER_EMAIL": "ci@example.com"}
    res = subprocess.run(args, cwd=cwd, env=env, text=True, capture_output=True, check=False)
    assert res.returncode == 0, f"{args}: {res.stdout}\n{res.stderr}"
    return res.stdout


def _write(proj: Path, files: dict[str, dict]) -> None:
    for rel, data in files.items():
        (proj / rel).parent.mkdir(parents=True, exist_ok=True)
        (proj / rel).write_text(json.dumps(data, indent=2))


def _table(md: str) -> list[list[str]]:
    """The cells of a markdown table, header row first (the |---| line dropped)."""
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert len(lines) >= 2 and set(lines[1].replace("|", "").strip()) <= set("-: "), md
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in [lines[0], *lines[2:]]]


@pytest.fixture(scope="module")
def dvc_project(tmp_path_factory):
    """The real dvc.yaml in a git + DVC repo whose HEAD holds the headlines of the committed run."""
    proj = tmp_path_factory.mktemp("metricsdiff") / "proj"
    proj.mkdir()
    shutil.copy(ROOT / "dvc.yaml", proj / "dvc.yaml")
    (proj / "reflectevo/resources").mkdir(parents=True)   # dvc.yaml's settings vars
    shutil.copy(ROOT / "reflectevo/resources/settings.yaml", proj / "reflectevo/resources/settings.yaml")
    shutil.copy(ROOT / "params.yaml", proj / "params.yaml")
    _sh("git", "init", "-q", cwd=proj)
    _sh("dvc", "init", "-q", cwd=proj)
    run = {"eval": committed("eval.json"), "curate": committed("curate.json"),
           "train": {**{s: committed(f"train/{s}.json") for s in SETTINGS},
                     **{s: {"setting": s, "trained": False, "status": "disabled"} for s in RL_SETTINGS}}}
    _write(proj, headlines(run["eval"], run["curate"], run["train"]))
    _sh("git", "add", "-A", cwd=proj)
    _sh("git", "commit", "-qm", "committed run", cwd=proj)
    return proj, run


def test_dvc_metrics_diff_of_the_committed_run_fits_a_terminal(dvc_project):
    proj, run = dvc_project
    # another run: every accuracy moves 3.1 points, three more curated rows per file, a new loss, and a
    # setting that did not train before trains now and is evaluated
    ev, cur, tr = copy.deepcopy(run["eval"]), copy.deepcopy(run["curate"]), copy.deepcopy(run["train"])
    for entry in ev["systems"].values():
        for block in [entry["overall"], *entry["per_task"].values()]:
            block.update({k: round(block[k] + 0.0313, 4) for k in ("acc_t1", "acc_t2") if block[k] is not None})
            if block.get("acc_t2") is not None:
                block["delta"] = round(block["acc_t2"] - block["acc_t1"], 4)
    new = next((s for s in SETTINGS if not tr[s]["trained"] and s != "sft_qa"), None)
    if new is not None:
        ev["systems"][new] = copy.deepcopy(ev["systems"]["base_reflect"])
        tr[new] = {"setting": new, "trained": True, new: {"train_loss": 1.2}}
    cur["counts"] = {k: v + 3 for k, v in cur["counts"].items()}
    _write(proj, headlines(ev, cur, tr))
    md = _sh("dvc", "metrics", "diff", "--md", cwd=proj)
    header, *rows = _table(md)
    assert header == ["Path", "Metric", "HEAD", "workspace", "Change"]
    assert len(rows) <= 60 and all(len(r) == len(header) for r in rows), md
    by_key = {(r[0], r[1]): r[2:] for r in rows}
    old_acc = run["eval"]["systems"]["base_reflect"]["overall"]["acc_t2"]
    head, work, change = by_key[("metrics/headline/eval.json", "base_reflect.overall.acc_t2")]
    assert (float(head), float(work), float(change)) == pytest.approx((old_acc, old_acc + 0.0313, 0.0313), abs=1e-4)
    if new is not None:
        assert by_key[(f"metrics/headline/train/{new}.json", "status")] == ["no training data", "trained", "-"]
        assert by_key[("metrics/headline/eval.json", f"{new}.overall.acc_t2")][0] == "-"
    header, *rows = _table(_sh("dvc", "metrics", "diff", "--md", "--all", cwd=proj))  # unchanged rows too
    assert len(rows) <= 60 and len(header) <= 8
    # every headline number of the committed run is listed (the plain diff leaves out unchanged ones, e.g. Δ)
    listed = {r[1] for r in rows if r[0] == "metrics/headline/eval.json"}
    assert set(_numbers(run["eval"])) <= listed
    shown = json.loads(_sh("dvc", "metrics", "show", "--json", cwd=proj))
    assert set(shown[""]["data"]) == {"metrics/headline/eval.json", "metrics/headline/curate.json",
                                      "metrics/headline/evolve.json",  # declared; absent in this repo
                                      *(f"metrics/headline/train/{s}.json" for s in SETTINGS + RL_SETTINGS)}


def test_the_stages_write_full_and_headline(tmp_path):
    """curate, train and evaluate write the full JSON to --metrics and the headline to --headline."""
    from test_curation import GOOD, _episode
    from test_stages import run, tiny_params

    params = tiny_params(tmp_path)
    (tmp_path / "raw").mkdir()
    eps = [_episode(1, False, [(GOOD, True), ("The second term was misread entirely.", False)]), _episode(2, True, [])]
    (tmp_path / "raw/episodes-00000-of-00001.jsonl").write_text("".join(json.dumps(e) + "\n" for e in eps))
    r = run("curate", "--params", params, "--raw", tmp_path / "raw", "--out", tmp_path / "curated",
            "--metrics", tmp_path / "cur.json", "--headline", tmp_path / "h/curate.json")
    assert r.exit_code == 0, r.output
    full = json.loads((tmp_path / "cur.json").read_text())
    assert "drops" in full and json.loads((tmp_path / "h/curate.json").read_text()) == full["counts"]

    (tmp_path / "empty.jsonl").write_text("")
    r = run("train", "--setting", "dpo_pm", "--params", params, "--train-data", tmp_path / "empty.jsonl",
            "--eval-data", "none", "--out", tmp_path / "models/dpo_pm", "--metrics", tmp_path / "train.json",
            "--headline", tmp_path / "h/train/dpo_pm.json")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "h/train/dpo_pm.json").read_text()) == {"status": "no training data"}

    run("prepare", "--params", params, "--out", tmp_path / "sources")
    r = run("evaluate", "--params", params, "--sources", tmp_path / "sources/test.jsonl", "--models",
            tmp_path / "models", "--predictions", tmp_path / "p.jsonl", "--metrics", tmp_path / "eval.json",
            "--plots", tmp_path / "plots", "--headline", tmp_path / "h/eval.json")
    assert r.exit_code == 0, r.output
    full = json.loads((tmp_path / "eval.json").read_text())
    head = json.loads((tmp_path / "h/eval.json").read_text())
    assert head == eval_headline(full) and head["base_reflect.overall.acc_t1"] == full["overall"]["acc_t1"]
    assert {k.split(".")[0] for k in head} == {"base_noreflect", "base_reflect"}
