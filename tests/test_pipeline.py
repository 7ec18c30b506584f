"""The real dvc.yaml in a throwaway git copy of the project, on the synthetic tiny-random model."""

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

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def sh(*args, cwd, check=True):
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "PYTHONPATH": str(cwd), "GIT_AUTHOR_NAME": "ci", "GIT_AUTHOR_EMAIL": "ci@example.com",
           "GIT_COMMITTER_NAME": "ci", "GIT_COMMITTER_EMAIL": "ci@example.com"}
    res = subprocess.run(args, cwd=cwd, env=env, text=True, capture_output=True)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    dst = tmp_path_factory.mktemp("pipeline") / "proj"
    shutil.copytree(ROOT, dst, ignore=ignore_at_root(ROOT, 
        ".git", ".venv", "cache", "tmp", "data", "models", "metrics", "tests", "bench", "__pycache__", "*.egg-info",
        "dvc.lock"))
    shutil.copytree(ROOT / "data/imported", dst / "data/imported")   # tracked: generate's import-file folder
    p = tiny_params_dict(dst / "params.yaml", tokens=8, steps=1)
    (dst / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    sh("git", "init", "-q", cwd=dst)
    sh("git", "add", "-A", cwd=dst)
    sh("git", "commit", "-qm", "test", cwd=dst)
    first = sh("dvc", "repro", cwd=dst)
    return dst, first.stdout


def test_dag(project):
    dst, _ = project
    dot = sh("dvc", "dag", "--dot", cwd=dst).stdout
    for a, b in [("prepare", "generate"), ("generate", "curate"), ("curate", "train@one_stage"),
                 ("curate", "train@dpo_pm"), ("prepare", "train@sft_qa"), ("train@two_stage", "evaluate"),
                 ("prepare", "evaluate")]:
        assert f'"{a}" -> "{b}"' in dot


def test_repro_writes_metrics(project):
    dst, out = project
    for stage in ("prepare", "generate", "curate", "train@one_stage", "train@two_stage", "train@dpo_pm",
                  "train@dpo_pref", "train@sft_qa", "evaluate"):
        assert f"Running stage '{stage}'" in out
    assert json.loads((dst / "metrics/train/sft_qa.json").read_text())["trained"] is True
    report = json.loads((dst / "metrics/eval.json").read_text())
    assert report["model"] == "tiny-random"
    for key in ("acc_t1", "acc_t2", "delta", "delta_i2c", "delta_c2i", "n"):
        assert key in report["overall"]
    assert report["overall"]["n"] == 6
    assert (dst / "dvc.lock").exists()
    shown = sh("dvc", "metrics", "show", "--json", cwd=dst).stdout
    assert "acc_t2" in shown


def test_second_repro_runs_nothing(project):
    dst, _ = project
    out = sh("dvc", "repro", cwd=dst).stdout
    assert "Running stage" not in out
    assert "Data and pipelines are up to date" in out


def test_exp_run_generate_param_reruns_generate_and_downstream_only(project):
    dst, _ = project
    sh("git", "add", "-A", cwd=dst)
    sh("git", "commit", "-qm", "after repro", cwd=dst)
    out = sh("dvc", "exp", "run", "-S", "generate.seed=1", cwd=dst).stdout
    assert "Running stage 'generate'" in out
    assert "Running stage 'prepare'" not in out
    gen = json.loads((dst / "metrics/generate.json").read_text())
    assert gen["run"]["computed"] == 12        # new seed -> new keys -> every episode recomputed
    shown = sh("dvc", "exp", "show", "--no-pager", "--csv", cwd=dst).stdout
    assert "overall.acc_t2" in shown


def test_unknown_preset_fails_fast(project):
    dst, _ = project
    res = sh("dvc", "exp", "run", "-S", "model=nope", cwd=dst, check=False)
    assert res.returncode != 0
    assert "models.nope" in res.stdout + res.stderr


def test_training_curves_are_dvc_plots(project):
    dst, _ = project
    out = sh("dvc", "plots", "show", "--json", cwd=dst).stdout
    assert "plots/train/sft_qa/plots/metrics/answerer/loss.tsv" in out


def test_rl_settings_are_stages_that_stay_disabled_by_default(project):
    dst, out = project
    report = json.loads((dst / "metrics/eval.json").read_text())
    for setting in ("grpo_one_stage", "grpo_reflect_retry", "rloo"):
        assert f"Running stage 'train@{setting}'" in out
        assert json.loads((dst / f"models/{setting}/model_card.json").read_text())["status"] == "disabled"
        assert "not enabled" in report["skipped"][setting]


def test_the_report_page_shows_values_not_reprs(project):
    from test_report_render import problems

    dst, _ = project
    page = (dst / "report/index.html").read_text(encoding="utf-8")
    assert problems(page) == [] and "Missing inputs" not in page
    for section in ("results", "diagnostics", "rounds", "transitions", "data", "episodes", "evolve"):
        assert f'<h2 id="{section}"' in page


def test_readme_blocks_marked_to_run_after_repro_run_here(project):
    """The README's (and docs/') ```sh blocks after `<!-- test: run after repro -->` run in this project."""
    from test_readme import RUN_AFTER_REPRO, sh_blocks

    dst, _ = project
    blocks = sh_blocks(RUN_AFTER_REPRO)
    assert blocks
    for block in blocks:
        res = sh("bash", "-e", "-o", "pipefail", "-c", block.text, cwd=dst, check=False)
        assert res.returncode == 0, f"{block.where}:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
        assert res.stdout.strip(), f"{block.where}: printed nothing"
