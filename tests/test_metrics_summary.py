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


def committed(name: str) -> dict:
    return json.loads((ROOT / "metrics" / name).read_text())


def headlines(eval_full: dict, curate_full: dict, train_full: dict[str, dict]) -> dict[str, dict]:
    """metrics/headline/<...>.json -> content, as the stages write them."""
    out = {"metrics/headline/eval.json": eval_headline(eval_full),
           "metrics/headline/curate.json": curate_headline(curate_full)}
    for s, full in train_full.items():
        out[f"metrics/headline/train/{s}.json"] = train_headline(full)
    return out


def test_eval_headline_is_flat_table2_numbers():
    full = committed("eval.json")
    h = eval_headline(full)
    assert h["base_reflect.overall.acc_t2"] == full["systems"]["base_reflect"]["overall"]["acc_t2"]
    assert h["base_noreflect.rg/chain_sum.delta"] == full["systems"]["base_noreflect"]["per_task"]["rg/chain_sum"]["delta"]
    assert h["sft_qa.overall.acc_t1"] == full["systems"]["sft_qa"]["overall"]["acc_t1"]
    assert "sft_qa.overall.acc_t2" not in h and "sft_qa.overall.delta" not in h  # Acc@t1 only: no nulls
    assert all(isinstance(v, (int, float)) for v in h.values())
    assert {k.rsplit(".", 1)[1] for k in h} == {"acc_t1", "acc_t2", "delta"}
    assert len(h) == 2 * 3 * 3 + 3  # two reflecting systems x (2 tasks + overall) x 3, sft_qa Acc@t1 x 3
    # the McNemar p-value against base_reflect, where the full file has one
    full["systems"]["base_noreflect"]["overall"]["p_vs_base_reflect"] = 0.5
    full["systems"]["base_noreflect"]["per_task"]["rg/syllogism"]["p_vs_base_reflect"] = None
    h = eval_headline(full)
    assert h["base_noreflect.overall.p_vs_base_reflect"] == 0.5 and not any("syllogism.p_" in k for k in h)
    # a file from before `systems` existed
    old = {k: committed("eval.json")[k] for k in ("system", "overall", "per_task")}
    assert eval_headline(old)["base_reflect.rg/syllogism.acc_t2"] == old["per_task"]["rg/syllogism"]["acc_t2"]


def test_curate_and_train_headlines():
    assert curate_headline(committed("curate.json")) == committed("curate.json")["counts"]
    assert train_headline(committed("train/one_stage.json")) == {"status": "no training data"}
    sft = committed("train/sft_qa.json")
    assert train_headline(sft) == {"status": "trained", "train_loss": sft["answerer"]["train_loss"]}
    two = {"setting": "two_stage", "trained": True, "reflector": {"train_loss": 1.5, "steps": 3},
           "corrector": {"train_loss": 0.25, "steps": 3}}
    assert train_headline(two) == {"status": "trained", "reflector.train_loss": 1.5, "corrector.train_loss": 0.25}


def test_dvc_yaml_declares_only_the_headlines():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]

    def paths(entries):
        return [next(iter(e)) if isinstance(e, dict) else e for e in entries or []]

    declared = {name: paths(st.get("metrics") or st.get("do", {}).get("metrics")) for name, st in stages.items()}
    assert declared == {"prepare": [], "generate": [], "curate": ["metrics/headline/curate.json"],
                        "train": ["metrics/headline/train/${key}.json"], "evaluate": ["metrics/headline/eval.json"],
                        "report": []}
    outs = {name: st.get("outs") or st.get("do", {}).get("outs") for name, st in stages.items()}
    for name, full in (("generate", "metrics/generate.json"), ("curate", "metrics/curate.json"),
                       ("train", "metrics/train/${key}.json"), ("evaluate", "metrics/eval.json")):
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
    shutil.copy(ROOT / "params.yaml", proj / "params.yaml")
    _sh("git", "init", "-q", cwd=proj)
    _sh("dvc", "init", "-q", cwd=proj)
    run = {"eval": committed("eval.json"), "curate": committed("curate.json"),
           "train": {s: committed(f"train/{s}.json") for s in SETTINGS}}
    _write(proj, headlines(run["eval"], run["curate"], run["train"]))
    _sh("git", "add", "-A", cwd=proj)
    _sh("git", "commit", "-qm", "committed run", cwd=proj)
    return proj, run


def test_dvc_metrics_diff_of_the_committed_run_fits_a_terminal(dvc_project):
    proj, run = dvc_project
    # another experiment: one_stage now trains and is evaluated, every number moves
    ev, cur, tr = copy.deepcopy(run["eval"]), copy.deepcopy(run["curate"]), copy.deepcopy(run["train"])
    for entry in ev["systems"].values():
        for block in [entry["overall"], *entry["per_task"].values()]:
            block.update({k: round(v + 0.0313, 4) for k, v in block.items() if k in ("acc_t1", "acc_t2") and v is not None})
            if block.get("acc_t2") is not None:
                block["delta"] = round(block["acc_t2"] - block["acc_t1"], 4)
    ev["systems"]["one_stage"] = copy.deepcopy(ev["systems"]["base_reflect"])
    cur["counts"] = {k: v + 3 for k, v in cur["counts"].items()}
    tr["one_stage"] = {"setting": "one_stage", "trained": True, "one_stage": {"train_loss": 1.2}}
    tr["sft_qa"]["answerer"]["train_loss"] = 0.41
    _write(proj, headlines(ev, cur, tr))
    md = _sh("dvc", "metrics", "diff", "--md", cwd=proj)
    header, *rows = _table(md)
    assert header == ["Path", "Metric", "HEAD", "workspace", "Change"]
    assert 30 <= len(rows) <= 60 and all(len(r) == len(header) for r in rows), md
    assert ["metrics/headline/eval.json", "base_reflect.overall.acc_t2", "0.4062", "0.4375", "0.0313"] in rows
    assert ["metrics/headline/train/one_stage.json", "status", "no training data", "trained", "-"] in rows
    assert ["metrics/headline/eval.json", "one_stage.overall.delta", "-", "0.0", "-"] in rows
    header, *rows = _table(_sh("dvc", "metrics", "diff", "--md", "--all", cwd=proj))  # unchanged rows too
    assert len(rows) <= 60 and len(header) <= 8
    shown = json.loads(_sh("dvc", "metrics", "show", "--json", cwd=proj))
    assert set(shown[""]["data"]) == {"metrics/headline/eval.json", "metrics/headline/curate.json",
                                      *(f"metrics/headline/train/{s}.json" for s in SETTINGS)}


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
