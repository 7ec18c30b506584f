"""Recipes (configs/recipes/): applied with DVC's own `-S` code to a copy of params.yaml and validated; a bad recipe
is one line and runs nothing; `reflectevo recipe run` queues a real DVC experiment that `dvc exp show` lists."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from reflectevo.cli import app
from reflectevo.config.params import read_params
from reflectevo.errors import ReflectEvoError
from reflectevo.recipes import apply, available, hydra_value, load_recipe, overrides, user_overrides

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params.yaml"
GIT_ENV = {"GIT_AUTHOR_NAME": "ci", "GIT_AUTHOR_EMAIL": "ci@example.com", "GIT_COMMITTER_NAME": "ci",
           "GIT_COMMITTER_EMAIL": "ci@example.com", "DVC_NO_ANALYTICS": "1"}


def get(params: dict, dotted: str):
    node = params
    for part in dotted.split("."):
        node = node[part]
    return node


def changed_keys(a, b, prefix: str = "") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = set()
        for k in set(a) | set(b):
            out |= changed_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return set() if a == b else {prefix.rstrip(".")}


@pytest.mark.parametrize("name", ["paper", "one-gpu"])
def test_committed_recipes_apply_and_validate(name: str) -> None:
    """Every key lands in params.yaml with the recipe's value (Hydra quoting round-trips) and nothing else changes."""
    recipe = load_recipe(name)
    result = apply(PARAMS, recipe)
    base = read_params(PARAMS)
    for key, value in recipe.overrides.items():
        assert get(result, key) == value, key
    changed = changed_keys(base, result)
    assert all(any(c == k or c.startswith(k + ".") for k in recipe.overrides) for c in changed), changed


def test_paper_recipe_is_the_papers_configuration() -> None:
    p = apply(PARAMS, load_recipe("paper"))
    tasks = [t["name"] for t in p["prepare"]["tasks"]]
    train = [t for t in tasks if t not in ("bigbench", "bigbench_free")]
    assert len(train) == 17 and {"logiqa", "math", "mbpp"} <= set(train)
    assert sum(t.startswith("bigbench/") for t in train) == 14
    assert {"bigbench", "bigbench_free", "logiqa", "math", "mbpp"} <= set(tasks)
    g = p["generate"]
    assert (g["max_new_tokens_trial"], g["temperature"], g["retry_temperature"], g["name_rejected"], g["demands"]) == \
        (512, 0.8, 0.0, False, ["all"])
    m = p["models"]["llama3-8b"]
    assert (m["lora"]["r"], m["lora"]["alpha"], m["lora"]["dropout"], m["lr_sft"], m["quantization"]) == (8, 32, 0.1, 1e-3, "4bit")
    assert (p["train"]["sft"]["epochs"], p["train"]["dpo"]["beta"], p["models"]["llama3-8b"]["lr_dpo"],
            p["train"]["dpo"]["epochs"]) == (5.0, 0.01, 5e-7, 1.0)
    assert p["model"] == "llama3-8b"
    on_top = apply(PARAMS, load_recipe("paper"), ["model=mistral-7b"])   # -S on top wins, the rest stays
    assert on_top["model"] == "mistral-7b" and on_top["models"]["mistral-7b"]["backend"] == "vllm"


@pytest.mark.parametrize("value", ["plain", "4bit", "true", "null", "it's", "a b", "bigbench/coqa", "", 1, -1, 0.5,
                                   5e-07, 1e-3, True, None, ["all", "x"], {"name": "t", "n": 2, "o": {"c": 4}}])
def test_hydra_values_round_trip_through_dvc(tmp_path: Path, value) -> None:
    from dvc.utils.hydra import apply_overrides

    f = tmp_path / "p.yaml"
    f.write_text("k: 0\n")
    apply_overrides(f, [f"k={hydra_value(value)}"])
    assert read_params_any(f)["k"] == value


def read_params_any(path: Path) -> dict:
    from ruamel.yaml import YAML

    return YAML(typ="safe", pure=True).load(path.read_text())


def test_user_overrides_parsing() -> None:
    assert user_overrides(["-S", "model=x", "--set-param=a.b=1", "-Sc=2", "-n", "name", "-S", "other.yaml:k=1"]) == \
        ["model=x", "a.b=1", "c=2"]
    rec = load_recipe("paper")
    assert not any(o.startswith("model=") for o in overrides(rec, ["model=gemma2-9b"]))


def write_recipe(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text,expect", [
    ("generate.k: 3\ngenerate.kk: 4\n", r"bad.yaml:2: key 'generate.kk': params.yaml has no 'kk' under 'generate'\. "
                                        r"Did you mean 'k'\?"),
    ("modle: llama3-8b\n", r"bad.yaml:1: key 'modle': params.yaml has no key 'modle'\. Did you mean 'model'\?"),
    ("prepare.tasks:\n  - {name: bigbench/strategyq}\n", r"unknown task 'bigbench/strategyq'.*Did you mean 'bigbench/strategyqa'"),
    ("prepare.tasks:\n  - {name: logica}\n", r"unknown task 'logica'.*Did you mean 'logiqa'"),
    ("generate.k: 0\n", r"generate.k: must be >= 1"),
])
def test_bad_recipe_is_one_line_and_writes_nothing(tmp_path: Path, text: str, expect: str) -> None:
    before = PARAMS.read_bytes()
    path = write_recipe(tmp_path, text)
    with pytest.raises(ReflectEvoError, match=expect):
        apply(PARAMS, load_recipe(str(path)))
    result = CliRunner().invoke(app, ["recipe", "run", str(path), "--queue"])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and result.output.startswith("error: ")
    assert PARAMS.read_bytes() == before


def test_unknown_recipe_name() -> None:
    assert {"paper", "one-gpu"} <= set(available())
    for args in (["recipe", "run", "papr"], ["plan", "--recipe", "papr"], ["recipe", "check", "papr"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, args
        assert "unknown recipe 'papr'. Did you mean 'paper'?" in result.output and result.output.count("\n") == 1


@pytest.fixture
def project(tmp_path: Path) -> Path:
    dst = tmp_path / "proj"
    dst.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, dst / name)
    shutil.copytree(ROOT / "configs", dst / "configs")
    (dst / "reflectevo/resources").mkdir(parents=True)
    shutil.copy(ROOT / "reflectevo/resources/settings.yaml", dst / "reflectevo/resources/settings.yaml")
    (dst / ".dvc").mkdir()
    shutil.copy(ROOT / ".dvc/config", dst / ".dvc/config")
    env = {**os.environ, **GIT_ENV}
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=dst, check=True, env=env)
    return dst


def test_recipe_run_queues_one_dvc_experiment(project: Path) -> None:
    """`reflectevo recipe run paper -S model=scripted --queue -n ...` = one `dvc exp run`; `dvc exp show` lists it
    with the recipe's values and the -S on top."""
    env = {**os.environ, **GIT_ENV, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "reflectevo.cli", "recipe", "run", "paper", "-S", "model=scripted",
                          "--queue", "-n", "paper-dry"], cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Queued experiment 'paper-dry'" in run.stdout + run.stderr
    assert (project / "params.yaml").read_text() == PARAMS.read_text()   # a queued run leaves the workspace as it was
    shown = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], cwd=project, env=env,
                           capture_output=True, text=True, timeout=300)
    found = {}
    for entry in json.loads(shown.stdout):
        for exp in entry.get("experiments") or []:
            for rev in exp.get("revs") or []:
                found[rev.get("name")] = rev["data"]["params"]["params.yaml"]["data"]
    p = found["paper-dry"]
    assert p["model"] == "scripted" and p["generate"]["k"] == 32 and p["train"]["dpo"]["beta"] == 0.01
    assert len(p["prepare"]["tasks"]) == 19
    subprocess.run([sys.executable, "-m", "dvc", "queue", "remove", "--all"], cwd=project, env=env, capture_output=True)
