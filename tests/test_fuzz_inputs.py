"""Fuzz test of the stage inputs: every stage script (and the CLI commands that read files) on damaged
input files — cut short, bytes overwritten, emptied, a folder in place of a file, random bytes, a field
deleted / retyped / added, a row dropped / doubled / replaced, a Parquet column dropped or retyped — exits
0 with right outputs, or 2 with one line naming the file and the outputs untouched (tests/fuzzing.py).

The pipeline they damage is the real one on the scripted model (no weights: each stage runs in tens of
milliseconds, in this process through typer's CliRunner); the train stage runs the tiny-random model.
Every failure the fuzzer found is also a regular test (tests/test_bad_inputs.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fuzzing import (
    check_contract,
    copy_tree,
    damage,
    fake_adapter,
    fuzz_settings,
    invoke,
    scripted_params,
    snapshot,
    stage,
)
from hypothesis import given
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base(scripted_pipeline):
    return scripted_pipeline


def _fresh(base: Path, root: Path) -> Path:
    """A fresh copy of the base pipeline for one example."""
    return copy_tree(base, root / "ex")


# -- generate ------------------------------------------------------------------------------------------

@fuzz_settings(12)
@given(data=st.data())
def test_generate_on_damaged_sources(base, tmp_path_factory, data):
    from reflectevo.episodes.shards import iter_episodes

    d = _fresh(base, tmp_path_factory.mktemp("g"))
    src = d / "sources/train.jsonl"
    op = damage(data, src, "jsonl")
    outputs = [d / "raw", d / "metrics/generate.json"]
    before = snapshot(*outputs)
    r = invoke(stage("generate"), "--params", d / "params.yaml", "--sources", src, "--out", d / "raw",
               "--summary", d / "metrics/generate.json", "--no-progress")
    if check_contract(r, outputs, before, [str(src)], f"generate ({op})"):
        ids = {str(json.loads(line)["id"]) for line in src.read_bytes().split(b"\n") if line.strip()}
        episodes = list(iter_episodes(d / "raw"))
        assert {ep["item_id"] for ep in episodes} == ids
        assert json.loads((d / "metrics/generate.json").read_text())["items"] == len(episodes)


# -- curate --------------------------------------------------------------------------------------------

@fuzz_settings(14)
@given(data=st.data())
def test_curate_on_damaged_shards(base, tmp_path_factory, data):
    d = _fresh(base, tmp_path_factory.mktemp("c"))
    (shard,) = sorted((d / "raw").glob("episodes-*.parquet"))
    op = damage(data, shard, "parquet")
    outputs = [d / "curated", d / "metrics/curate.json"]
    before = snapshot(*outputs)
    r = invoke(stage("curate"), "--params", d / "params.yaml", "--raw", d / "raw", "--out", d / "curated",
               "--metrics", d / "metrics/curate.json")
    if check_contract(r, outputs, before, [str(shard), str(d / "raw")], f"curate ({op})"):
        counts = json.loads((d / "curated/stats.json").read_text())["counts"]
        for name, n in counts.items():
            lines = [x for x in (d / "curated" / f"{name}.jsonl").read_bytes().split(b"\n") if x]
            assert len(lines) == n and all(isinstance(json.loads(x), dict) for x in lines)


# -- evaluate ------------------------------------------------------------------------------------------

EVALUATE_INPUTS = {"sources/test.jsonl": "jsonl", "models/one_stage/model_card.json": "json",
                   "models/one_stage/adapter_config.json": "json", "models/one_stage/adapter_model.safetensors": "bytes",
                   "models/two_stage/model_card.json": "json"}


@fuzz_settings(14)
@given(data=st.data())
def test_evaluate_on_damaged_sources_and_settings(base, tmp_path_factory, data):
    d = _fresh(base, tmp_path_factory.mktemp("e"))
    rel = data.draw(st.sampled_from(sorted(EVALUATE_INPUTS)), label="input")
    target = d / rel
    op = damage(data, target, EVALUATE_INPUTS[rel])
    outputs = [d / "metrics/eval.json", d / "eval", d / "plots"]
    before = snapshot(*outputs)
    r = invoke(stage("evaluate"), "--params", d / "params.yaml", "--sources", d / "sources/test.jsonl",
               "--models", d / "models", "--predictions", d / "eval/predictions.jsonl",
               "--metrics", d / "metrics/eval.json", "--plots", d / "plots")
    if check_contract(r, outputs, before, [str(target), str(target.parent)], f"evaluate ({rel}: {op})"):
        report = json.loads((d / "metrics/eval.json").read_text())
        n = report["systems"]["base_reflect"]["overall"]["n"]
        preds = [x for x in (d / "eval/predictions.jsonl").read_bytes().split(b"\n") if x]
        assert len(preds) == n * len(report["systems"])
        assert set(report["systems"]) | set(report["skipped"]) >= {"one_stage", "two_stage"}
        assert all(isinstance(why, str) and why for why in report["skipped"].values())


# -- report (the stage and `reflectevo report`) ----------------------------------------------------------

REPORT_INPUTS = {"metrics/eval.json": "json", "curated/stats.json": "json", "eval/predictions.jsonl": "jsonl",
                 "plots/accuracy_by_round.json": "json", "plots/transitions.json": "json"}


@fuzz_settings(16)
@given(data=st.data())
def test_report_on_damaged_inputs(base, tmp_path_factory, data):
    from reflectevo.cli import app as cli

    d = _fresh(base, tmp_path_factory.mktemp("r"))
    rel = data.draw(st.sampled_from(sorted(REPORT_INPUTS)), label="input")
    target = d / rel
    op = damage(data, target, REPORT_INPUTS[rel])
    out = d / "report/index.html"
    args = ["--metrics", d / "metrics/eval.json", "--stats", d / "curated/stats.json",
            "--predictions", d / "eval/predictions.jsonl", "--plots", d / "plots", "--out", out]
    for name, app, cmd in (("report stage", stage("report"), []), ("reflectevo report", cli, ["report"])):
        r = invoke(app, *cmd, *args)
        if check_contract(r, [out], {str(out): None}, [str(target)], f"{name} ({rel}: {op})"):
            assert out.read_text().lstrip().startswith("<!DOCTYPE html>")
            out.unlink()


# -- self-evolution stages --------------------------------------------------------------------------------

@fuzz_settings(12)
@given(data=st.data())
def test_evolve_stages_on_damaged_inputs(base, tmp_path_factory, data):
    d = _fresh(base, tmp_path_factory.mktemp("v"))
    evolve = stage("evolve")
    params = d / "params.yaml"
    it2 = d / "evolve/it2"
    step = data.draw(st.sampled_from(["generate", "curate", "summary", "evaluate"]), label="step")
    if step == "generate":   # iteration 1's trained setting writes the reflections
        rel = data.draw(st.sampled_from(["models/one_stage/model_card.json", "models/one_stage/adapter_config.json",
                                         "models/one_stage/adapter_model.safetensors", "sources/train.jsonl"]))
        kind = {"json": "json", "jsonl": "jsonl"}.get(rel.rsplit(".", 1)[1], "bytes")
        args = ["generate", "--iteration", "it2", "--previous", d / "models", "--out", it2, "--params", params,
                "--sources", d / "sources/train.jsonl"]
        outputs = [it2 / "raw", it2 / "generate.json"]
    elif step == "curate":   # its episodes, and iteration 1's training data (evolve.data: union)
        text = params.read_text().replace("data: new", "data: union")
        params.write_text(text)
        rel = data.draw(st.sampled_from(["curated/dplus_train.jsonl", "curated/dplus_eval.jsonl"]
                                        + [str(p.relative_to(d)) for p in sorted((it2 / "raw").glob("*.parquet"))]))
        kind = "parquet" if rel.endswith(".parquet") else "jsonl"
        args = ["curate", "--iteration", "it2", "--previous-data", d / "curated", "--out", it2, "--params", params]
        outputs = [it2 / "curated", it2 / "curate.json", it2 / "data"]
    elif step == "evaluate":  # iteration 2's trained setting, on the test split
        fake_adapter(it2 / "models/one_stage", "one_stage")
        rel = data.draw(st.sampled_from(["evolve/it2/models/one_stage/model_card.json",
                                         "evolve/it2/models/one_stage/adapter_config.json", "sources/test.jsonl"]))
        kind = "jsonl" if rel.endswith(".jsonl") else "json"
        args = ["evaluate", "--iteration", "it2", "--out", it2, "--params", params, "--sources", d / "sources/test.jsonl"]
        outputs = [it2 / "eval.json", it2 / "predictions.jsonl"]
    else:                    # the summary over iterations 1 and 2
        (it2 / "eval.json").write_text((d / "metrics/eval.json").read_text())
        (it2 / "curate.json").write_text((d / "metrics/curate.json").read_text())
        (it2 / "train.json").write_text((d / "metrics/train/one_stage.json").read_text())
        (it2 / "predictions.jsonl").write_text((d / "eval/predictions.jsonl").read_text())
        rel = data.draw(st.sampled_from(["metrics/eval.json", "metrics/generate.json", "metrics/curate.json",
                                         "metrics/train/one_stage.json", "eval/predictions.jsonl",
                                         "evolve/it2/eval.json", "evolve/it2/generate.json",
                                         "evolve/it2/predictions.jsonl"]))
        kind = "jsonl" if rel.endswith(".jsonl") else "json"
        args = ["summary", "--params", params, "--metrics-dir", d / "metrics", "--eval-dir", d / "eval",
                "--evolve-dir", d / "evolve", "--out", d / "metrics/evolve.json", "--plots", d / "plots/evolve.json"]
        outputs = [d / "metrics/evolve.json", d / "plots/evolve.json"]
    target = d / rel
    op = damage(data, target, kind)
    before = snapshot(*outputs)
    r = invoke(evolve, *args)
    if check_contract(r, outputs, before, [str(target), str(target.parent)], f"evolve {step} ({rel}: {op})"):
        for out in outputs:
            assert out.exists(), f"evolve {step}: {out} missing after exit 0"


# -- train (the tiny-random model: inputs that stay valid are trained on for one step) ---------------------

TRAIN_INPUTS = {"one_stage": "curated/dplus_train.jsonl", "dpo_pm": "curated/dpm_train.jsonl",
                "sft_qa": "sources/train.jsonl"}


@pytest.mark.slow
@fuzz_settings(6)
@given(data=st.data())
def test_train_on_damaged_rows(base, tmp_path_factory, data):
    d = _fresh(base, tmp_path_factory.mktemp("t"))
    params = scripted_params(d / "tiny.yaml", model="tiny-random")
    setting = data.draw(st.sampled_from(sorted(TRAIN_INPUTS)), label="setting")
    target = d / TRAIN_INPUTS[setting]
    op = damage(data, target, "jsonl")
    outputs = [d / "models" / setting, d / "metrics/train.json", d / "checkpoints"]
    before = snapshot(*outputs)
    r = invoke(stage("train"), "--setting", setting, "--params", params, "--train-data", target,
               "--out", d / "models" / setting, "--metrics", d / "metrics/train.json")
    if check_contract(r, outputs, before, [str(target)], f"train {setting} ({op})"):
        card = json.loads((d / "models" / setting / "model_card.json").read_text())
        assert card["status"] in ("trained", "no training data")


# -- demo stages --------------------------------------------------------------------------------------------

@fuzz_settings(8)
@given(data=st.data())
def test_demo_stages_on_damaged_inputs(base, tmp_path_factory, data):
    d = _fresh(base, tmp_path_factory.mktemp("d"))
    demo = stage("demo")
    which = data.draw(st.sampled_from(["prepare", "evaluate"]), label="command")
    if which == "prepare":
        target = d / data.draw(st.sampled_from(["sources/train.jsonl", "sources/test.jsonl"]))
        op = damage(data, target, "jsonl")
        outputs = [d / "demo/sources"]
        args = ["prepare", "--params", d / "params.yaml", "--exclude", d / "sources", "--out", d / "demo/sources"]
    else:
        rel = data.draw(st.sampled_from(["sources/test.jsonl", "models/one_stage/model_card.json"]))
        target = d / rel
        op = damage(data, target, "jsonl" if rel.endswith(".jsonl") else "json")
        outputs = [d / "demo/eval", d / "demo/metrics.json", d / "demo/plots"]
        args = ["evaluate", "--params", d / "params.yaml", "--protocol", "oracle", "--sources", d / "sources/test.jsonl",
                "--models", d / "models", "--predictions", d / "demo/eval/predictions.jsonl",
                "--metrics", d / "demo/metrics.json", "--plots", d / "demo/plots"]
    before = snapshot(*outputs)
    r = invoke(demo, *args)
    if check_contract(r, outputs, before, [str(target), str(target.parent)], f"demo {which} ({op})"):
        for out in outputs:
            assert out.exists()


# -- CLI commands that read files ---------------------------------------------------------------------------

@fuzz_settings(16)
@given(data=st.data())
def test_cli_commands_on_damaged_files(base, tmp_path_factory, data):
    from reflectevo.cli import app as cli

    d = _fresh(base, tmp_path_factory.mktemp("cli"))
    cmd = data.draw(st.sampled_from(["verify", "metrics", "metrics-raw", "metrics-theirs", "export", "export-raw",
                                     "import", "publish"]), label="command")
    outputs: list[Path] = []
    if cmd == "verify":
        preds = d / "preds.jsonl"
        items = [json.loads(x) for x in (d / "sources/test.jsonl").read_bytes().split(b"\n") if x]
        task = items[0]["task"]
        preds.write_text("".join(json.dumps({"id": it["id"], "prediction": f"Action: Finish[{it['answer']}]"}) + "\n"
                                 for it in items if it["task"] == task))
        target, kind, args = preds, "jsonl", ["verify", task, preds]
    elif cmd == "metrics":
        target, kind, args = d / "eval/predictions.jsonl", "jsonl", ["metrics", d / "eval/predictions.jsonl"]
    elif cmd == "metrics-raw":
        (target,) = sorted((d / "raw").glob("*.parquet"))
        kind, args = "parquet", ["metrics", d / "raw"]
    elif cmd == "metrics-theirs":
        target, kind, args = d / "theirs/raw.jsonl", "jsonl", ["metrics", d / "theirs/raw.jsonl", "--task", "rg/chain_sum"]
    elif cmd == "export":    # ours -> theirs
        what = data.draw(st.sampled_from(["dplus", "dpm"]), label="kind")
        target, kind = d / f"curated/{what}_train.jsonl", "jsonl"
        outputs = [d / "out.jsonl"]
        args = ["convert", "--to", "reflectevo", "--kind", what, target, outputs[0]]
    elif cmd == "export-raw":
        (target,) = sorted((d / "raw").glob("*.parquet"))
        kind, outputs = "parquet", [d / "out.jsonl"]
        args = ["convert", "--to", "reflectevo", "--kind", "raw", target, outputs[0]]
    elif cmd == "import":    # theirs -> ours
        what = data.draw(st.sampled_from(["raw", "dplus", "dpm"]), label="kind")
        target, kind = d / f"theirs/{what}.jsonl", "jsonl"
        outputs = [d / "out.jsonl"]
        args = ["convert", "--from", "reflectevo", "--kind", what, "--task", "rg/chain_sum", target, outputs[0]]
    else:
        rel = data.draw(st.sampled_from(["model_card.json", "adapter_config.json", "adapter_model.safetensors",
                                         "README.md"]))
        (d / "models/one_stage/README.md").write_text("---\nlicense: apache-2.0\nlibrary_name: peft\n"
                                                      "pipeline_tag: text-generation\n---\n# one_stage\n")
        target, kind = d / "models/one_stage" / rel, {"json": "json"}.get(rel.rsplit(".", 1)[1], "bytes")
        args = ["publish", d / "models/one_stage", "--repo-id", "someone/one-stage", "--dry-run"]
    op = damage(data, target, kind)
    before = snapshot(*outputs)
    r = invoke(cli, *args)
    check_contract(r, outputs, before, [str(target), str(target.parent)], f"reflectevo {cmd} ({op})")


# -- CLI commands without input files: their arguments ------------------------------------------------------

@fuzz_settings(16)
@given(data=st.data())
def test_cli_arguments(data):
    """`reflectevo items / tasks / verify / metrics / convert` with drawn task names, splits, counts and
    options: the items, or one line naming the argument."""
    from reflectevo.cli import app as cli

    task = data.draw(st.sampled_from(["rg/chain_sum", "rg/chain_summ", "rg/", "", "reflectevo/logiqa", "x.yaml"])
                     | st.text(max_size=12), label="task")
    cmd = data.draw(st.sampled_from(["items", "tasks", "verify", "metrics", "convert"]), label="command")
    if cmd == "items":
        split = data.draw(st.sampled_from(["test", "train", "dev", "TEST"]), label="split")
        n = data.draw(st.integers(-3, 3), label="n")
        args = ["items", task, "--split", split, "-n", n]
    elif cmd == "tasks":
        args = ["tasks"] + data.draw(st.sampled_from([[], ["--all"]]), label="flags")
    elif cmd == "verify":
        args = ["verify", task, "/nonexistent/preds.jsonl"]
    elif cmd == "metrics":
        args = ["metrics", "/nonexistent", "--protocol", data.draw(st.sampled_from(["oracle", "oracel", ""]))]
    else:
        args = ["convert", "/nonexistent/in.jsonl", "/nonexistent/out.jsonl", "--kind",
                data.draw(st.sampled_from(["raw", "dplus", "dpm", "dpref", "dlpus"])),
                data.draw(st.sampled_from(["--from", "--to"])), data.draw(st.sampled_from(["reflectevo", "theirs"]))]
    r = invoke(cli, *args)
    names = [str(a) for a in args[1:] if str(a)] + ["task", "--split", "split", "--kind", "--protocol", "--from", "--to"]
    if check_contract(r, [], {}, names, f"reflectevo {' '.join(map(str, args))}") and cmd == "items":
        rows = [json.loads(x) for x in r.stdout.splitlines()]
        assert all({"id", "task", "question", "answer"} <= set(row) for row in rows)
