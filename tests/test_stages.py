"""Each stage script through typer's CliRunner on tiny fixtures (synthetic tiny-random model)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml
from helpers import tiny_params_dict
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def stage(name):
    spec = importlib.util.spec_from_file_location(f"stage_{name}", ROOT / "stages" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.app


def tiny_params(tmp_path: Path, **overrides) -> Path:
    p = tiny_params_dict(ROOT / "params.yaml")
    for section, values in overrides.items():
        p[section].update(values)
    out = tmp_path / "params.yaml"
    out.write_text(yaml.safe_dump(p, sort_keys=False))
    return out


def run(name, *args):
    res = runner.invoke(stage(name), [str(a) for a in args])
    return res


def test_all_stages_end_to_end_on_the_tiny_model(tmp_path):
    params = tiny_params(tmp_path)
    d = tmp_path
    r = run("prepare", "--params", params, "--out", d / "sources")
    assert r.exit_code == 0, r.output
    train = [json.loads(x) for x in (d / "sources/train.jsonl").read_text().splitlines()]
    test = [json.loads(x) for x in (d / "sources/test.jsonl").read_text().splitlines()]
    assert len(train) == 12 and len(test) == 6
    assert not {r["question"] for r in train} & {r["question"] for r in test}

    r = run("generate", "--params", params, "--sources", d / "sources/train.jsonl", "--out", d / "raw",
            "--summary", d / "gen.json", "--no-progress")
    assert r.exit_code == 0, r.output
    summary = json.loads((d / "gen.json").read_text())
    assert summary["items"] == 12 and summary["run"]["computed"] == 12
    assert summary["reflections"] == 2 * (12 - summary["trial1_correct"])

    r = run("curate", "--params", params, "--raw", d / "raw", "--out", d / "curated", "--metrics", d / "cur.json")
    assert r.exit_code == 0, r.output
    assert (d / "curated/README.md").exists() and (d / "curated/stats.json").exists()

    for name in ("dplus", "dpm", "dpref"):
        assert (d / f"curated/{name}_train.jsonl").exists()
    r = run("train", "--setting", "one_stage", "--params", params, "--train-data", d / "curated/dplus_train.jsonl",
            "--eval-data", d / "curated/dplus_eval.jsonl", "--out", d / "models/one_stage", "--metrics", d / "train.json")
    assert r.exit_code == 0, r.output
    r = run("train", "--setting", "sft_qa", "--params", params, "--train-data", d / "sources/train.jsonl",
            "--out", d / "models/sft_qa", "--metrics", d / "train_qa.json")
    assert r.exit_code == 0, r.output
    assert json.loads((d / "train_qa.json").read_text())["trained"] is True

    r = run("evaluate", "--params", params, "--sources", d / "sources/test.jsonl", "--models", d / "models",
            "--predictions", d / "pred.jsonl", "--metrics", d / "eval.json", "--plots", d / "plots")
    assert r.exit_code == 0, r.output
    report = json.loads((d / "eval.json").read_text())
    assert {"base_noreflect", "base_reflect", "sft_qa"} <= set(report["systems"])
    assert report["systems"]["sft_qa"]["overall"]["acc_t2"] is None          # Acc@t1 only
    assert "no adapter at" in report["skipped"]["two_stage"]
    for key in ("acc_t1", "acc_t2", "delta", "delta_i2c", "delta_c2i", "n"):
        assert key in report["overall"]
        for task_metrics in report["per_task"].values():
            assert key in task_metrics
    assert report["overall"]["n"] == 6 and set(report["per_task"]) == {"rg/chain_sum", "rg/syllogism"}
    lo, hi = report["overall"]["acc_t2_ci"]
    assert 0.0 <= lo <= report["overall"]["acc_t2"] <= hi <= 1.0


def test_generate_rerun_computes_nothing(tmp_path):
    params = tiny_params(tmp_path)
    run("prepare", "--params", params, "--out", tmp_path / "sources")
    args = ("--params", params, "--sources", tmp_path / "sources/train.jsonl", "--out", tmp_path / "raw",
            "--summary", tmp_path / "gen.json", "--no-progress")
    assert run("generate", *args).exit_code == 0
    first = sorted(p.read_bytes() for p in (tmp_path / "raw").glob("episodes-*.parquet"))
    assert first
    assert run("generate", *args).exit_code == 0
    assert json.loads((tmp_path / "gen.json").read_text())["run"]["computed"] == 0
    assert sorted(p.read_bytes() for p in (tmp_path / "raw").glob("episodes-*.parquet")) == first


@pytest.mark.parametrize("mutate,message", [
    (lambda p: p.update(model="nope"), "unknown model preset 'nope'"),
    (lambda p: p["generate"].update(temprature=1.0), "generate.temprature: unknown key. Did you mean 'temperature'?"),
    (lambda p: p["generate"].update(k="x"), "generate.k: expected an integer"),
    (lambda p: p["generate"].pop("seed"), "generate.seed: required key is missing"),
    (lambda p: p["generate"].update(demands=["1-1-1", "9-9-9"]), "generate.demands: unknown demand id '9-9-9'"),
    (lambda p: p["generate"].update(protocol="oracel"), "Did you mean 'oracle'?"),
])
def test_bad_params_one_line_exit_2_nothing_written(tmp_path, mutate, message):
    p = yaml.safe_load(tiny_params(tmp_path).read_text())
    mutate(p)
    params = tmp_path / "bad.yaml"
    params.write_text(yaml.safe_dump(p))
    (tmp_path / "sources").mkdir()
    (tmp_path / "sources/train.jsonl").write_text('{"id": "a", "task": "rg/chain_sum", "question": "1+1", "answer": "2"}\n')
    r = run("generate", "--params", params, "--sources", tmp_path / "sources/train.jsonl", "--out", tmp_path / "raw",
            "--summary", tmp_path / "gen.json", "--no-progress")
    assert r.exit_code == 2
    assert message in r.output and "Traceback" not in r.output
    assert not (tmp_path / "raw").exists() and not (tmp_path / "gen.json").exists()


def test_unknown_preset_error_lists_all_presets(tmp_path):
    p = yaml.safe_load(tiny_params(tmp_path).read_text())
    p["model"] = "llama3-8"
    params = tmp_path / "bad.yaml"
    params.write_text(yaml.safe_dump(p))
    (tmp_path / "d.jsonl").write_text("")
    r = run("train", "--setting", "one_stage", "--params", params, "--train-data", tmp_path / "d.jsonl", "--out",
            tmp_path / "m", "--metrics", tmp_path / "t.json")
    assert r.exit_code == 2
    assert "Did you mean 'llama3-8b'?" in r.output and "qwen2_5-0_5b-instruct" in r.output


def test_unknown_task_in_prepare(tmp_path):
    params = tiny_params(tmp_path)
    p = yaml.safe_load(params.read_text())
    p["prepare"]["tasks"][0]["name"] = "rg/chain_summ"
    params.write_text(yaml.safe_dump(p))
    r = run("prepare", "--params", params, "--out", tmp_path / "sources")
    assert r.exit_code == 2 and "Did you mean 'rg/chain_sum'" in r.output
    assert not (tmp_path / "sources").exists()


def test_empty_task_source_is_a_clear_error(tmp_path):
    params = tiny_params(tmp_path)
    src = tmp_path / "train.jsonl"
    src.write_text("")
    r = run("generate", "--params", params, "--sources", src, "--out", tmp_path / "raw", "--summary",
            tmp_path / "g.json", "--no-progress")
    assert r.exit_code == 2 and f"{src}: no train items to generate from" in r.output
    assert not (tmp_path / "raw").exists() and not (tmp_path / "g.json").exists()


def test_malformed_sources_name_file_and_line(tmp_path):
    params = tiny_params(tmp_path)
    src = tmp_path / "train.jsonl"
    src.write_text('{"id": "a", "task": "rg/chain_sum", "question": "1+1", "answer": "2"}\n{broken\n')
    r = run("generate", "--params", params, "--sources", src, "--out", tmp_path / "raw", "--summary",
            tmp_path / "g.json", "--no-progress")
    assert r.exit_code == 2 and f"{src}:2: malformed JSON line" in r.output


def test_empty_dplus_is_recorded_and_evaluate_completes(tmp_path):
    params = tiny_params(tmp_path)
    (tmp_path / "empty.jsonl").write_text("")
    r = run("train", "--setting", "one_stage", "--params", params, "--train-data", tmp_path / "empty.jsonl",
            "--eval-data", tmp_path / "empty.jsonl", "--out", tmp_path / "models/one_stage", "--metrics",
            tmp_path / "train.json")
    assert r.exit_code == 0, r.output
    card = json.loads((tmp_path / "models/one_stage/model_card.json").read_text())
    assert card["status"] == "no training data"
    assert json.loads((tmp_path / "train.json").read_text())["trained"] is False
    run("prepare", "--params", params, "--out", tmp_path / "sources")
    r = run("evaluate", "--params", params, "--sources", tmp_path / "sources/test.jsonl", "--models",
            tmp_path / "models", "--predictions", tmp_path / "p.jsonl", "--metrics", tmp_path / "eval.json",
            "--plots", tmp_path / "plots")
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["system"] == "base_reflect" and "no reflection fixed" in report["skipped"]["one_stage"]


def test_evaluate_runs_every_trained_setting(tmp_path, tiny_preset):
    """Synthetic D+ / D± rows -> adapters for each setting -> evaluate reports each system."""
    from test_training import CFG, dpm_rows, dplus_rows

    from reflectevo.models.fingerprint import model_fingerprint
    from reflectevo.training.run import train_setting

    params = tiny_params(tmp_path)
    run("prepare", "--params", params, "--out", tmp_path / "sources")
    fp = model_fingerprint("tiny-random", tiny_preset)
    for setting, rows in (("one_stage", dplus_rows(2)), ("two_stage", dplus_rows(2)), ("dpo_pm", dpm_rows(2))):
        assert train_setting(setting, "tiny-random", tiny_preset, fp, rows, [], CFG, tmp_path / "models" / setting)["trained"]
    r = run("evaluate", "--params", params, "--sources", tmp_path / "sources/test.jsonl", "--models",
            tmp_path / "models", "--predictions", tmp_path / "p.jsonl", "--metrics", tmp_path / "eval.json",
            "--plots", tmp_path / "plots")
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "eval.json").read_text())
    assert {"base_noreflect", "base_reflect", "one_stage", "two_stage", "dpo_pm"} <= set(report["systems"])
    assert report["system"] == "one_stage"
    t1 = {s: m["overall"]["acc_t1"] for s, m in report["systems"].items()}
    assert len(set(t1.values())) == 1                      # trial 1 is the base model's for every system
    assert set(report["skipped"]) == {"dpo_pref", "sft_qa", "grpo_one_stage", "grpo_reflect_retry", "rloo"}
    preds = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert {p["system"] for p in preds} == set(report["systems"]) and len(preds) == 6 * 5
    reflected = [p for p in preds if p["system"] == "two_stage" and not p["t1_correct"]]
    assert reflected and all("reflection" in p and "t2" in p for p in reflected)
    # multi-round (params.yaml evaluate.rounds = 2): Acc@t1..t3 per system, and the plot data
    rounds = yaml.safe_load(open(params))["evaluate"]["rounds"]
    assert rounds >= 2
    for s, m in report["systems"].items():
        if s != "sft_qa":
            assert len(m["overall"]["acc_by_round"]) == rounds + 1
    by_round = json.loads((tmp_path / "plots/accuracy_by_round.json").read_text())
    assert {(r["system"], r["round"]) for r in by_round} == {(s, k) for s in report["systems"] if s != "sft_qa"
                                                            for k in range(1, rounds + 2)}
    transitions = json.loads((tmp_path / "plots/transitions.json").read_text())
    for s in ("base_reflect", "one_stage", "two_stage", "dpo_pm"):
        assert sum(r["count"] for r in transitions if r["system"] == s) == 6


def test_curate_with_a_judge_preset_and_a_bad_one(tmp_path):
    params = tiny_params(tmp_path, curate={"judge": "tiny-random"})
    run("prepare", "--params", params, "--out", tmp_path / "sources")
    # synthetic episodes with several fixing reflections per item, so the judge has pairs to rank
    from test_curation import _episode

    texts = ["I forgot the carry; redo the tens.", "Wrong sign on the second term; flip it.", "Misread seven as one."]
    (tmp_path / "raw").mkdir()
    eps = [_episode(i, False, [(t, True) for t in texts]) for i in range(3)]
    (tmp_path / "raw/episodes-00000-of-00001.jsonl").write_text("".join(json.dumps(e) + "\n" for e in eps))
    r = run("curate", "--params", params, "--raw", tmp_path / "raw", "--out", tmp_path / "cur", "--metrics",
            tmp_path / "c.json")
    assert r.exit_code == 0, r.output
    stats = json.loads((tmp_path / "cur/stats.json").read_text())
    assert stats["judge"]["model"]["preset"] == "tiny-random" and stats["judge"]["prompt_version"].startswith("judge-v1-")
    n_pairs = stats["counts"]["dpref_train"] + stats["counts"]["dpref_eval"] + stats["drops"].get("judge_inconsistent", 0)
    assert n_pairs == 3 * 3                                    # every pair was judged: kept or dropped as inconsistent

    bad = tiny_params(tmp_path, curate={"judge": "tiny-randm"})
    r = run("curate", "--params", bad, "--raw", tmp_path / "raw", "--out", tmp_path / "cur2", "--metrics", tmp_path / "c2.json")
    assert r.exit_code == 2 and "curate.judge: unknown model preset 'tiny-randm'. Did you mean 'tiny-random'?" in r.output
    assert not (tmp_path / "cur2").exists()
