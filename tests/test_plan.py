"""`reflectevo plan`: the committed prediction (bench/results/plan-default.json) and a fresh plan of the committed
params.yaml against the committed default run (metrics/), within 15% on episodes, calls and tokens per phase,
optimizer steps and evaluation calls; every figure names its assumption; the paper recipe's scale."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from reflectevo.cli import app
from reflectevo.config.params import read_params
from reflectevo.plan import TOLERANCE, build_plan, compare_run, model_size_b
from reflectevo.recipes import apply, load_recipe

ROOT = Path(__file__).resolve().parents[1]
METRICS = ROOT / "metrics"
COMMITTED = ROOT / "bench/results/plan-default.json"


def test_committed_prediction_matches_the_committed_run() -> None:
    """The prediction committed in bench/results against the metrics files as they are committed now."""
    saved = json.loads(COMMITTED.read_text())
    rows = compare_run(saved["plan"], METRICS)
    checked = [r for r in rows if r["checked"]]
    assert len(checked) >= 20
    off = [r for r in checked if not r["within"]]
    assert not off, off
    assert saved["all_checked_within"] and saved["commit"] and saved["date"] and saved["machine"]


def test_fresh_plan_of_the_committed_params_matches_the_committed_run() -> None:
    """A plan of params.yaml as committed now (its tasks, sizes, budgets) against the committed metrics."""
    plan = build_plan(read_params(ROOT / "params.yaml"))
    rows = compare_run(plan, METRICS)
    off = [r for r in rows if r["checked"] and not r["within"]]
    assert not off, off
    assert {r["what"] for r in rows if r["checked"]} >= {"generate episodes", "generate trial1 calls",
                                                         "generate reflection calls", "generate trial2 calls",
                                                         "generate tokens, all phases"}
    assert all(r["relative_error"] <= TOLERANCE for r in rows if r["checked"])


def _whys(node, path: str = "") -> list[str]:
    """Every figure of a plan must carry its assumption: {"value": ..., "why": "..."}."""
    missing = []
    if isinstance(node, dict):
        if "value" in node:
            return [] if node.get("why") else [path]
        for k, v in node.items():
            missing += _whys(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            missing += _whys(v, f"{path}[{i}]")
    return missing


def test_plan_json_names_an_assumption_for_every_figure() -> None:
    result = CliRunner().invoke(app, ["plan", str(ROOT / "params.yaml"), "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert not _whys(plan)
    assert plan["throughput"]["generated_tokens_per_s"]["why"].startswith("110 generated tokens/s")
    text = CliRunner().invoke(app, ["plan", str(ROOT / "params.yaml"), "--tokens-per-s", "55"])
    assert text.exit_code == 0 and "| trial2 |" in text.output and "given (--tokens-per-s)" in text.output


@pytest.fixture
def no_local_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Plan as on a user's machine: no local copies, no hub snapshots, no network."""
    monkeypatch.setenv("REFLECTEVO_DATA", str(tmp_path / "none"))
    monkeypatch.delenv("REFLECTEVO_HUB_DIR", raising=False)
    monkeypatch.setenv("REFLECTEVO_OFFLINE", "1")


def test_paper_recipe_plan_is_reflectevo_460k_sized(no_local_data) -> None:
    plan = build_plan(apply(ROOT / "params.yaml", load_recipe("paper")), "paper")
    assert not _whys(plan)
    by_task = {r["task"]: r for r in plan["tasks"]}
    assert by_task["logiqa"]["train_items"]["value"] == 7376 and by_task["math"]["train_items"]["value"] == 7500
    assert by_task["mbpp"]["train_items"]["value"] == 374
    assert sum(r["test_items"]["value"] for r in plan["tasks"]) == 2000
    assert by_task["logiqa"]["trial1_accuracy"]["value"] == pytest.approx(0.302)
    assert "paper Table 2" in by_task["logiqa"]["trial1_accuracy"]["why"]
    reflections = plan["generate"]["phases"]["reflection"]["calls"]["value"]
    assert 430_000 < reflections < 520_000          # ReflectEvo-460K: 461,799 reflection samples
    assert plan["device"] == "gpu" and plan["time"]["unit"].startswith("GPU-hours") and plan["time"]["total"] > 1
    assert plan["evaluate"]["systems"]["sft_qa"] == {"trial1": plan["evaluate"]["systems"]["sft_qa"]["trial1"]}
    assert set(plan["evaluate"]["systems"]) >= {"base_noreflect", "base_reflect", "one_stage", "two_stage", "dpo_pm",
                                               "dpo_pref", "sft_qa"}


def test_from_run_uses_measured_rates(tmp_path: Path) -> None:
    run = json.loads((METRICS / "generate.json").read_text())
    plan = build_plan(read_params(ROOT / "params.yaml"), run=run)
    t = plan["tasks"][0]
    assert t["trial1_accuracy"]["why"].startswith("measured") and t["new_tokens_per_call"]["trial1"]["why"].startswith("measured")
    assert plan["generate"]["phases"]["reflection"]["calls"]["value"] == run["reflections"]


@pytest.mark.parametrize("name,hub_id,size", [("llama3-8b", "meta-llama/Meta-Llama-3-8B-Instruct", 8.0),
                                              ("qwen2_5-1_5b-instruct", "Qwen/Qwen2.5-1.5B-Instruct", 1.5),
                                              ("gemma2-9b", "google/gemma-2-9b-it", 9.0),
                                              ("smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct", 0.135)])
def test_model_size_from_preset(name: str, hub_id: str, size: float) -> None:
    from reflectevo.config.presets import ModelPreset

    assert model_size_b(name, ModelPreset(source="hub", hub_id=hub_id)) == pytest.approx(size)


def test_committed_paper_dry_run() -> None:
    """bench/results/paper-dryrun.json: the paper recipe through dvc repro at ReflectEvo-460K scale, every stage timed,
    the plan's prediction for the same params within 15% of what the run produced, the card's paper table."""
    d = json.loads((ROOT / "bench/results/paper-dryrun.json").read_text())
    assert d["commit"] and d["date"] and d["machine"] and d["scale"] == 1.0
    for stage in ("prepare", "generate", "curate", "train@one_stage", "evaluate", "report"):
        assert d["stages"][stage]["seconds"] > 0 and d["stages"][stage]["peak_rss_mb"] > 0
    assert 430_000 < d["generate"]["reflections"] < 520_000 and d["prepare"]["test_items"] == 2000
    assert len(d["prepare"]["per_task"]) == 19
    assert all(t["status"] in ("skipped", "disabled") and t["reason"] for t in d["train"].values())
    assert {"base_noreflect", "base_reflect"} == set(d["evaluate"]["systems"])
    for what, (predicted, measured) in d["plan_vs_run"].items():
        assert abs(predicted - measured) <= TOLERANCE * measured, (what, predicted, measured)
    table = "\n".join(d["data_card_domain_table"])
    assert "/ 461,799" in table and "/ 253,405" in table and "Physics reasoning" in table
    card = (ROOT / "bench/results/paper-dryrun-card.md").read_text()
    assert "## Per domain, next to ReflectEvo-460K" in card and "## Sources: licences and citations" in card
