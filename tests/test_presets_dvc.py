"""Every preset in params.yaml can be selected with `dvc exp run -S model=<preset>`.

What DVC does before any stage runs, with DVC's own code in a throwaway git repo holding copies of
dvc.yaml and params.yaml: the `-S` overrides are grouped and parsed (Hydra's grammar) and written into
params.yaml, dvc.yaml is loaded (`models.${model}` interpolated), and every stage's params dependency is
hashed, which raises `MissingParamsError` for a key that is not there (`dvc exp run` stops on that with
`Parameters 'models.<x>' are missing`). A preset whose name DVC cannot address fails here, in CI.
About 0.2 s per preset.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from reflectevo.config.params import read_params
from reflectevo.config.presets import PRESET_ALIASES, load_preset, preset_name_problem
from reflectevo.errors import ReflectEvoError

ROOT = Path(__file__).resolve().parents[1]
PARAMS_TEXT = (ROOT / "params.yaml").read_text()
MODELS = yaml.safe_load(PARAMS_TEXT)["models"]
LOCAL_COPY = "/models/local-copy"


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dvc-presets")
    shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
    (root / "reflectevo/resources").mkdir(parents=True)   # dvc.yaml's settings vars
    shutil.copy(ROOT / "reflectevo/resources/settings.yaml", root / "reflectevo/resources/settings.yaml")
    (root / ".dvc").mkdir()
    shutil.copy(ROOT / ".dvc" / "config", root / ".dvc" / "config")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    return root


def dvc_resolve(root: Path, params_text: str, set_params: list[str]) -> dict[str, dict]:
    """`dvc exp run -S <set_params>` up to the first stage: {stage: the params values DVC tracks}."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import apply_overrides

    (root / "params.yaml").write_text(params_text)
    for path, overrides in to_path_overrides(set_params).items():   # what `dvc exp run -S` runs
        apply_overrides(root / path, overrides)
    resolved: dict[str, dict] = {}
    with Repo(str(root)) as repo:
        for stage in repo.index.stages:
            for dep in stage.deps:
                if isinstance(dep, ParamsDependency):
                    resolved[stage.name] = dict(dep.get_hash().value)
    return resolved


@pytest.mark.parametrize("preset", list(MODELS))
def test_dvc_exp_run_resolves_every_preset(dvc_repo, preset):
    hub = MODELS[preset].get("source") == "hub"
    set_params = [f"model={preset}"] + ([f"models.{preset}.path={LOCAL_COPY}"] if hub else [])
    resolved = dvc_resolve(dvc_repo, PARAMS_TEXT, set_params)
    expected = {**MODELS[preset], **({"path": LOCAL_COPY} if hub else {})}
    model_stages = [s for s, values in resolved.items() if "model" in values]
    assert {"generate", "evaluate", "train@one_stage", "train@sft_qa"} <= set(model_stages)
    for stage in model_stages:
        assert resolved[stage]["model"] == preset
        assert resolved[stage][f"models.{preset}"] == expected, stage
    # and what DVC wrote is what our stages load
    name, loaded = load_preset(read_params(dvc_repo / "params.yaml"))
    assert name == preset and (loaded.path == LOCAL_COPY) == hub


def test_hub_presets_take_the_local_copy_flag_as_written_in_the_readme():
    # Hydra refuses `-S models.X.path=...` for a key params.yaml does not have (it would need `+models...`)
    for name, preset in MODELS.items():
        if preset.get("source") == "hub":
            assert preset.get("path") == "", f"models.{name}: give every hub preset `path: \"\"`"


def test_a_dotted_preset_name_fails_dvc_resolution(dvc_repo):
    """The check above catches a bad name: the pre-rename params.yaml, as DVC saw it."""
    from dvc.dependency.param import MissingParamsError

    old = PARAMS_TEXT.replace("  qwen2_5-0_5b-instruct:\n", "  qwen2.5-0.5b-instruct:\n")
    assert old != PARAMS_TEXT
    with pytest.raises(MissingParamsError, match=r"models\.qwen2\.5-0\.5b-instruct"):
        dvc_resolve(dvc_repo, old, ["model=qwen2.5-0.5b-instruct"])


def test_name_rule():
    for good in MODELS:
        assert preset_name_problem(good) == ""
    assert "e.g. 'qwen2_5-0_5b-instruct'" in preset_name_problem("qwen2.5-0.5b-instruct")
    assert "e.g. 'phi3_5-mini'" in preset_name_problem("phi3.5-mini")
    for bad in ("true", "null", "inf", "1_000"):   # Hydra's -S reads these as a bool, None, a float, an int
        assert preset_name_problem(bad), bad
    for bad in ("a b", "x:y", "7b"):                 # and a name starts with a letter
        assert preset_name_problem(bad), bad


def test_a_dotted_preset_in_params_is_rejected_with_the_new_name(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text(PARAMS_TEXT.replace("  qwen2_5-0_5b-instruct:\n", "  qwen2.5-0.5b-instruct:\n"))
    from reflectevo.cli import app

    r = CliRunner().invoke(app, ["params", "check", str(p)])
    assert r.exit_code == 2
    assert "models.qwen2.5-0.5b-instruct: preset name" in r.output and "e.g. 'qwen2_5-0_5b-instruct'" in r.output


def test_alias_table_points_at_current_presets():
    for old, new in PRESET_ALIASES.items():
        assert old not in MODELS and new in MODELS
        assert preset_name_problem(old)          # each old name is one DVC cannot select


@pytest.mark.parametrize("old", list(PRESET_ALIASES))
def test_old_names_say_did_you_mean_in_our_commands(tmp_path, old):
    from reflectevo.cli import app

    new = PRESET_ALIASES[old]
    hint = f"Did you mean {new!r}?"
    with pytest.raises(ReflectEvoError, match=f"renamed.*{hint.replace('?', '[?]')}"):
        load_preset(read_params(ROOT / "params.yaml"), old)
    stale = tmp_path / "params.yaml"   # a params.yaml still selecting the old name
    stale.write_text(PARAMS_TEXT.replace("\nmodel: smollm2-135m\n", f"\nmodel: {old}\n"))
    runner = CliRunner()
    for args in (["presets", str(stale)], ["params", "check", str(stale)],
                 ["serve", "--model", old, "--params", str(ROOT / "params.yaml")]):
        r = runner.invoke(app, args)
        assert r.exit_code == 2 and hint in r.output and "Traceback" not in r.output, (args, r.output)
    (tmp_path / "train.jsonl").write_text('{"id": "a", "task": "rg/chain_sum", "question": "1+1", "answer": "2"}\n')
    from test_stages import run

    r = run("generate", "--params", stale, "--sources", tmp_path / "train.jsonl", "--out", tmp_path / "raw",
            "--summary", tmp_path / "gen.json", "--no-progress")
    assert r.exit_code == 2 and hint in r.output
    assert not (tmp_path / "raw").exists()
