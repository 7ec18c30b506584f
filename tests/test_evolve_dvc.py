"""Self-evolution stages under real DVC: dvc.yaml's `evolve_*` foreach stages and the `evolve` summary in a
throwaway git repo, on the synthetic tiny-random model.

Iteration 1 (the main pipeline's outputs: sources, a trained one_stage adapter, its curated data and
metrics, base-model episodes in data/raw) is written by the fixture as plain files, and the test's dvc.yaml
keeps only the project's evolve stages, so `dvc repro` runs exactly the iterations' stages."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import ignore_at_root, tiny_params_dict

from reflectevo.adapters import adapter_hash

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
EVOLVE_STAGES = ("evolve_generate", "evolve_curate", "evolve_train", "evolve_evaluate", "evolve")


def sh(*args, cwd, check=True):
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "PYTHONPATH": str(cwd), "OMP_NUM_THREADS": "1", "GIT_AUTHOR_NAME": "ci", "GIT_AUTHOR_EMAIL": "ci@example.com",
           "GIT_COMMITTER_NAME": "ci", "GIT_COMMITTER_EMAIL": "ci@example.com"}
    res = subprocess.run(args, cwd=cwd, env=env, text=True, capture_output=True)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


def ran(out: str) -> set[str]:
    return {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage '")}


def dplus_rows(n=4):
    return [{"id": f"s{i}", "item_id": f"item-{i}", "task": "rg/chain_sum", "question": f"What is {i} + 1?",
             "choices": None, "answer": str(i + 1), "trial1": f"Thought: guess.\nAction: Finish[{i}]",
             "reflection": "I forgot to add one. Plan: add carefully.",
             "trial2": f"Thought: {i} + 1 = {i + 1}.\nAction: Finish[{i + 1}]"} for i in range(n)]


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    from reflectevo.config.presets import load_preset
    from reflectevo.config.params import load_section, read_params
    from reflectevo.training.config import TrainConfig
    from reflectevo.models.fingerprint import model_fingerprint
    from reflectevo.training.run import train_setting

    dst = tmp_path_factory.mktemp("evolve") / "proj"
    shutil.copytree(ROOT, dst, ignore=ignore_at_root(ROOT, 
        ".git", ".venv", "cache", "tmp", "data", "models", "metrics", "plots", "report", "tests", "bench", "docs",
        "__pycache__", "*.egg-info", "dvc.lock", "checkpoints", "demo"))   # demo/dvc.yaml: the demo's own pipeline
    p = tiny_params_dict(dst / "params.yaml", tokens=6, steps=1, n_train=3, n_test=2)
    p["prepare"]["tasks"] = p["prepare"]["tasks"][:1]          # rg/chain_sum only
    p["generate"]["k"] = 2
    p["evaluate"]["rounds"] = 1
    p["curate"]["judge"] = "none"
    (dst / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    spec = yaml.safe_load((dst / "dvc.yaml").read_text())
    spec["stages"] = {k: v for k, v in spec["stages"].items() if k in EVOLVE_STAGES}
    spec.pop("plots", None)
    (dst / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))

    # iteration 1, as the main pipeline leaves it
    sh(sys.executable, "stages/prepare.py", "--params", "params.yaml", "--out", "data/sources", cwd=dst)
    params = read_params(dst / "params.yaml")
    name, preset = load_preset(params)
    res = train_setting("one_stage", name, preset, model_fingerprint(name, preset), dplus_rows(), [],
                        load_section(params, "train", TrainConfig), dst / "models" / "one_stage")
    assert res["trained"]
    (dst / "data/curated").mkdir(parents=True)
    (dst / "data/curated/dplus_train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in dplus_rows()))
    (dst / "data/curated/dplus_eval.jsonl").write_text("")
    sh(sys.executable, "stages/generate.py", "--params", "params.yaml", "--out", "data/raw",
       "--summary", "metrics/generate.json", "--no-progress", cwd=dst)
    write_json(dst / "metrics/curate.json", {"counts": {"dplus_train": 4, "dplus_eval": 0, "dpm_train": 0, "dpm_eval": 0}})
    write_json(dst / "metrics/train/one_stage.json", {"model": name, **res})
    items = [json.loads(x) for x in (dst / "data/sources/test.jsonl").read_text().splitlines()]
    write_json(dst / "metrics/eval.json", {"systems": {"one_stage": {"overall": {
        "n": len(items), "acc_t1": 0.0, "acc_t2": 0.5, "delta": 0.5}}}})
    (dst / "data/eval").mkdir(parents=True)
    (dst / "data/eval/predictions.jsonl").write_text("".join(json.dumps(
        {"system": "one_stage", "item_id": it["id"], "t1_correct": False, "t2_correct": i == 0}) + "\n"
        for i, it in enumerate(items)))
    sh(sys.executable, "stages/evolve.py", "chain", "2", cwd=dst)
    sh("git", "init", "-q", cwd=dst)
    sh("git", "add", "-A", cwd=dst)
    sh("git", "commit", "-qm", "iteration 1", cwd=dst)
    first = sh("dvc", "repro", cwd=dst)
    return dst, first.stdout


def test_iteration_2_runs_with_iteration_1s_adapter(project):
    dst, out = project
    assert ran(out) == {"evolve_generate@it2", "evolve_curate@it2", "evolve_train@it2", "evolve_evaluate@it2", "evolve"}
    h = adapter_hash(dst / "models/one_stage")
    from reflectevo.episodes.shards import iter_episodes

    it2 = list(iter_episodes(dst / "evolve/it2/raw"))
    it1 = {ep["item_id"]: ep for ep in iter_episodes(dst / "data/raw")}
    assert len(it2) == len(it1) == 3
    for ep in it2:
        assert ep["gen"]["adapters"] == {"setting": "one_stage", "reflector": h, "corrector": h}
        first = it1[ep["item_id"]]
        assert "adapters" not in first["gen"] and ep["episode_id"] != first["episode_id"]
        if ep["samples"]:
            assert [s["reflection"]["text"] for s in ep["samples"]] != [s["reflection"]["text"] for s in first["samples"]]
    gen = json.loads((dst / "evolve/it2/generate.json").read_text())
    assert gen["adapters"]["phases"]["reflector"]["hash"] == h
    evo = json.loads((dst / "metrics/evolve.json").read_text())
    assert evo["iterations"] == 2 and evo["it1"]["acc_t2"] == 0.5 and "it2" in evo
    assert json.loads((dst / "plots/evolve.json").read_text())[0]["iteration"] == 1
    shown = json.loads(sh("dvc", "metrics", "show", "--json", cwd=dst).stdout)
    assert shown[""]["data"]["metrics/headline/evolve.json"]["data"]["it1"]["acc_t2"] == 0.5


def test_adding_an_iteration_runs_only_its_stages_and_removing_it_keeps_the_rest(project):
    dst, _ = project
    sh(sys.executable, "stages/evolve.py", "chain", "3", cwd=dst)
    out = sh("dvc", "repro", cwd=dst).stdout
    assert ran(out) == {"evolve_generate@it3", "evolve_curate@it3", "evolve_train@it3", "evolve_evaluate@it3", "evolve"}
    evo = json.loads((dst / "metrics/evolve.json").read_text())
    it2_trained = json.loads((dst / "evolve/it2/train.json").read_text())["trained"]
    if it2_trained:   # iteration 3 generated with iteration 2's adapter
        from reflectevo.episodes.shards import iter_episodes

        ep = next(iter(iter_episodes(dst / "evolve/it3/raw")))
        assert ep["gen"]["adapters"]["reflector"] == adapter_hash(dst / "evolve/it2/models/one_stage")
    else:             # tiny-random fixed nothing at iteration 2: the chain stops with one line
        assert "evolve it3: stopped: iteration 2's one_stage adapter" in out
        assert "stopped" in evo["it3"] and evo["stopped_at"] == 3 and "stopped" not in evo["it2"]
        assert "not trained" in evo["it2"]["note"]
    sh(sys.executable, "stages/evolve.py", "chain", "2", cwd=dst)
    out = sh("dvc", "repro", cwd=dst).stdout
    assert ran(out) == {"evolve"}                              # iteration 2 stays valid
    assert json.loads((dst / "metrics/evolve.json").read_text())["iterations"] == 2
    status = sh("dvc", "status", "--json", cwd=dst).stdout
    assert json.loads(status) == {}


def test_bad_evolve_input_is_one_line(project):
    dst, _ = project
    p = yaml.safe_load((dst / "params.yaml").read_text())
    for key, value, msg in (("setting", "dpo_pm", "evolve.setting: 'dpo_pm' is not trained in models"),
                            ("setting", "sft_qa", "evolve.setting"), ("iterations", 0, "evolve.iterations: must be >= 1")):
        bad = {**p, "evolve": {**p["evolve"], key: value}}
        (dst / "bad.yaml").write_text(yaml.safe_dump(bad))
        res = sh(sys.executable, "stages/evolve.py", "generate", "--iteration", "it2", "--previous", "models",
                 "--out", "evolve/bad", "--params", "bad.yaml", cwd=dst, check=False)
        assert res.returncode == 2 and msg in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert not (dst / "evolve/bad").exists()
