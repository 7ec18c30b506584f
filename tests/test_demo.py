"""The demo pipeline (demo/dvc.yaml, stages/demo.py): fresh held-out items, one evaluation per protocol on a
chosen subset of systems, and a report page with both protocols (synthetic tiny-random model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_stages import ROOT, run, tiny_params

from reflectevo.config.params import load_section
from reflectevo.errors import ReflectEvoError


def demo_params(tmp_path: Path, items: int = 4, protocols=None) -> Path:
    params = tiny_params(tmp_path)
    p = yaml.safe_load(params.read_text())
    p["demo"] = {"items": items, "protocols": protocols or {
        "oracle": {"systems": []}, "intrinsic": {"systems": ["base_reflect", "one_stage"]}}}
    params.write_text(yaml.safe_dump(p, sort_keys=False))
    return params


def rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_demo_items_are_fresh_and_as_many_as_asked(tmp_path):
    params = demo_params(tmp_path, items=5)
    assert run("prepare", "--params", params, "--out", tmp_path / "sources").exit_code == 0
    r = run("demo", "prepare", "--params", params, "--exclude", tmp_path / "sources", "--out", tmp_path / "demo")
    assert r.exit_code == 0, r.output
    demo = rows(tmp_path / "demo/test.jsonl")
    seen = rows(tmp_path / "sources/train.jsonl") + rows(tmp_path / "sources/test.jsonl")
    by_task = {}
    for d in demo:
        by_task[d["task"]] = by_task.get(d["task"], 0) + 1
    assert by_task == {"rg/chain_sum": 5, "rg/syllogism": 5}
    assert not {d["id"] for d in demo} & {s["id"] for s in seen}
    assert not {d["question"] for d in demo} & {s["question"] for s in seen}
    card = json.loads((tmp_path / "demo/card.json").read_text())
    assert card["counts"]["rg/chain_sum"]["test"] == 5 and card["params"]["demo"]["items"] == 5
    # chain_sum options reach the items (the verifier and prompts of the same task variant)
    assert all(d["meta"]["task_options"]["max_digits"] == 1 for d in demo if d["task"] == "rg/chain_sum")
    # without the default run's sources there is nothing to exclude against: one line, exit 2
    r = run("demo", "prepare", "--params", params, "--exclude", tmp_path / "nowhere", "--out", tmp_path / "d2")
    assert r.exit_code == 2 and "nowhere/train.jsonl: not found" in r.output and not (tmp_path / "d2").exists()


def test_demo_evaluate_runs_the_protocol_on_the_listed_systems_only(tmp_path, tiny_preset):
    from test_training import CFG, dplus_rows

    from reflectevo.models.fingerprint import model_fingerprint
    from reflectevo.training.run import train_setting

    params = demo_params(tmp_path)
    run("prepare", "--params", params, "--out", tmp_path / "sources")
    assert run("demo", "prepare", "--params", params, "--exclude", tmp_path / "sources",
               "--out", tmp_path / "demo").exit_code == 0
    fp = model_fingerprint("tiny-random", tiny_preset)
    for setting in ("one_stage", "two_stage"):
        assert train_setting(setting, "tiny-random", tiny_preset, fp, dplus_rows(2), [], CFG,
                             tmp_path / "models" / setting)["trained"]
    out = {}
    for protocol in ("intrinsic", "oracle"):
        r = run("demo", "evaluate", "--params", params, "--protocol", protocol, "--sources", tmp_path / "demo/test.jsonl",
                "--models", tmp_path / "models", "--predictions", tmp_path / protocol / "p.jsonl",
                "--metrics", tmp_path / protocol / "eval.json", "--plots", tmp_path / protocol / "plots",
                "--headline", tmp_path / protocol / "headline.json")
        assert r.exit_code == 0, r.output
        out[protocol] = json.loads((tmp_path / protocol / "eval.json").read_text())
    intr, orc = out["intrinsic"], out["oracle"]
    assert intr["protocol"] == "intrinsic" and orc["protocol"] == "oracle"
    assert intr["demo"]["items"] == 8 and intr["demo"]["protocol"] == "intrinsic"
    assert set(intr["systems"]) == {"base_reflect", "one_stage"}          # the listed subset
    assert intr["skipped"]["two_stage"] == "not in this evaluation's systems"
    assert "dpo_pm" not in intr["skipped"]                                # only listed systems are accounted for
    assert {"base_noreflect", "base_reflect", "one_stage", "two_stage"} <= set(orc["systems"])   # [] = all
    assert "no adapter at" in orc["skipped"]["dpo_pm"]
    # intrinsic: every item reflected, right ones too; oracle: only the wrong ones
    preds = rows(tmp_path / "intrinsic/p.jsonl")
    assert {p["system"] for p in preds} == {"base_reflect", "one_stage"}
    assert len([p for p in preds if p["system"] == "base_reflect" and "reflection" in p]) == 8
    oracle_preds = rows(tmp_path / "oracle/p.jsonl")
    assert not [p for p in oracle_preds if p["system"] == "base_reflect" and p["t1_correct"] and "reflection" in p]
    # a protocol the demo does not list: one line naming the choices, exit 2, nothing written
    r = run("demo", "evaluate", "--params", params, "--protocol", "oracel", "--sources", tmp_path / "demo/test.jsonl",
            "--models", tmp_path / "models", "--metrics", tmp_path / "x/eval.json")
    assert r.exit_code == 2 and "oracle" in r.output and not (tmp_path / "x").exists()


def test_demo_config_rejects_bad_protocols_and_systems():
    good = {"items": 3, "protocols": {"oracle": {"systems": []}}}
    assert load_section({"demo": good}, "demo").items == 3
    with pytest.raises(ReflectEvoError, match="demo.protocols: unknown protocol 'oracel'"):
        load_section({"demo": {"items": 3, "protocols": {"oracel": {"systems": []}}}}, "demo")
    with pytest.raises(ReflectEvoError, match="demo.protocols.oracle.systems: unknown system 'one_stag'.*one_stage"):
        load_section({"demo": {"items": 3, "protocols": {"oracle": {"systems": ["one_stag"]}}}}, "demo")
    with pytest.raises(ReflectEvoError, match="demo.items: must be >= 1"):
        load_section({"demo": {"items": 0, "protocols": {"oracle": {"systems": []}}}}, "demo")
    with pytest.raises(ReflectEvoError, match="demo.protocols: name at least one"):
        load_section({"demo": {"items": 3, "protocols": {}}}, "demo")


def test_demo_pipeline_reads_the_project_params():
    """demo/dvc.yaml runs from the root on ../params.yaml: every protocol it lists has a stage, and the
    report reads the two the page shows."""
    dvc = yaml.safe_load((ROOT / "demo/dvc.yaml").read_text())
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    load_section(params, "demo")
    assert set(params["demo"]["protocols"]) == {"oracle", "intrinsic"}
    assert all(s.get("wdir", s.get("do", {}).get("wdir")) == ".." for s in dvc["stages"].values())
    cmd = dvc["stages"]["demo_report"]["cmd"]
    assert "metrics/demo/eval-oracle.json" in cmd and "--other metrics/demo/eval-intrinsic.json" in cmd
