"""Damaged and mistaken inputs, one case each: what the fuzz tests (tests/test_fuzz_*.py) and a user's first
tries found. Every stage and command stops with one line naming the file:line or the params key, exit 2,
before it loads a model, and leaves its outputs as they were; only a card saying "no training data" or
"disabled" makes evaluation skip a setting, and the skip's reason shows in the metrics and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from fuzzing import copy_tree, error_line, fake_adapter, invoke, scripted_params, snapshot, stage

from reflectevo.cli import app as cli


@pytest.fixture(scope="module")
def base(scripted_pipeline):
    return scripted_pipeline


@pytest.fixture
def d(base, tmp_path):
    return copy_tree(base, tmp_path / "ex")


def one_line(r, *names: str) -> str:
    """The single error line of an exit-2 result, after checking it names each of `names`."""
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert r.exit_code == 2, r.output
    line = error_line(r.stderr)
    assert "Traceback" not in r.output, r.stderr
    for n in names:
        assert n in line, line
    return line


def generate(d: Path, sources: Path):
    return invoke(stage("generate"), "--params", d / "params.yaml", "--sources", sources, "--out", d / "raw",
                  "--summary", d / "metrics/generate.json", "--no-progress")


def evaluate(d: Path):
    return invoke(stage("evaluate"), "--params", d / "params.yaml", "--sources", d / "sources/test.jsonl",
                  "--models", d / "models", "--predictions", d / "eval/predictions.jsonl",
                  "--metrics", d / "metrics/eval.json", "--plots", d / "plots")


def curate(d: Path):
    return invoke(stage("curate"), "--params", d / "params.yaml", "--raw", d / "raw", "--out", d / "curated",
                  "--metrics", d / "metrics/curate.json")


# -- the shared readers: folders, empty, unreadable, not UTF-8 ----------------------------------------------

def test_generate_with_a_folder_as_sources_is_one_line(d):
    before = snapshot(d / "raw", d / "metrics/generate.json")
    line = one_line(generate(d, d / "sources"), f"{d / 'sources'}: is a folder, expected a file")
    assert "IsADirectoryError" not in line
    assert snapshot(d / "raw", d / "metrics/generate.json") == before


@pytest.mark.parametrize("content,message", [
    (b"", "no train items to generate from"),
    (b'{"id": "a", "task": "rg/chain_sum", "question": "1 + 1", "answer": "2"}\n\xff\xfe\n', ":2: malformed JSON line"),
    (b'{"id": "a", "task": "rg/chain_sum", "question": 5, "answer": "2"}\n', ":1: item 'a': field 'question' must be a string"),
    (b'{"id": "a", "task": "rg/chain_sum", "question": "q", "answer": "2", "choices": 3}\n', ":1: item 'a': field 'choices'"),
    (b'{"id": "a", "task": "rg/chain_sum", "question": "q", "answer": "2", "meta": "x"}\n', ":1: item 'a': field 'meta'"),
    (b'{"id": "a", "task": "rg/chain_summ", "question": "q", "answer": "2"}\n', ":1: unknown task 'rg/chain_summ'"),
    (b'{"id": "a", "task": "rg/chain_sum", "question": "q", "answer": "2", "meta": {"task_options": {"choices": 2}}}\n',
     ":1: task rg/chain_sum: choices must be >= 3"),
])
def test_generate_on_bad_sources_stops_before_any_model(d, content, message):
    src = d / "bad.jsonl"
    src.write_bytes(content)
    before = snapshot(d / "raw", d / "metrics/generate.json")
    one_line(generate(d, src), str(src), message)
    assert snapshot(d / "raw", d / "metrics/generate.json") == before


def test_an_unreadable_file_is_one_line(d, monkeypatch):
    """chmod 000 (as root, which reads it anyway, the same PermissionError a user would get is raised)."""
    import os

    src = d / "sources/train.jsonl"
    src.chmod(0)
    if os.geteuid() == 0:
        real_open = Path.open

        def denied(self, *args, **kwargs):
            if self == src:
                raise PermissionError(13, "Permission denied", str(self))
            return real_open(self, *args, **kwargs)

        monkeypatch.setattr(Path, "open", denied)
    try:
        one_line(generate(d, src), f"{src}: cannot read the file (permission denied)")
    finally:
        src.chmod(0o644)


@pytest.mark.skipif(__import__("os").geteuid() == 0, reason="root reads a chmod-000 file; the test above raises "
                    "the same PermissionError in-process")
def test_an_unreadable_file_in_a_real_process(d):
    """The same as a separate process with a real permission: one line on stderr, exit status 2."""
    import os
    import subprocess
    import sys

    from fuzzing import ROOT

    src = d / "sources/train.jsonl"
    src.chmod(0)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(ROOT / "stages/generate.py"), "--params", str(d / "params.yaml"),
                          "--sources", str(src), "--out", str(d / "out"), "--summary", str(d / "out.json")],
                         capture_output=True, text=True, env=env, cwd=str(d), check=False)
    src.chmod(0o644)
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.strip() == f"error: {src}: cannot read the file (permission denied)"
    assert not (d / "out").exists() and not (d / "out.json").exists()


# -- episode shards ------------------------------------------------------------------------------------------

def _shard(d: Path) -> Path:
    (shard,) = sorted((d / "raw").glob("episodes-*.parquet"))
    return shard


def test_a_flipped_byte_in_a_shard_is_one_line(d):
    """A damaged data page decodes to non-UTF-8 "text": pyarrow's UnicodeDecodeError was a traceback."""
    import pyarrow.parquet as pq

    shard = _shard(d)
    pq.write_table(pq.read_table(shard), shard, compression="none")   # the episode text readable in the file
    raw = bytearray(shard.read_bytes())
    raw[raw.index(b'"trial1"') + 1] = 0xFF                            # no longer UTF-8
    shard.write_bytes(bytes(raw))
    before = snapshot(d / "curated", d / "metrics/curate.json")
    one_line(curate(d), str(shard), "not a readable Parquet file")
    assert snapshot(d / "curated", d / "metrics/curate.json") == before


@pytest.mark.parametrize("path,value,message", [
    (("samples", 0, "reflection", "text"), 5, "field 'samples[0].reflection.text' must be a string, got int"),
    (("trial1", "correct"), "yes", "field 'trial1.correct' must be true or false"),
    (("trial1",), "text", "field 'trial1' must be an object"),
    (("samples", 0), [1], "field 'samples[0]' must be an object"),
    (("trial1", "n_new_tokens"), "many", "field 'trial1.n_new_tokens' must be an integer or null"),
    (("episode_id",), ["x"], "field 'episode_id' must be a string, got list"),   # was: unhashable type 'list'
])
def test_a_mistyped_episode_field_is_named_with_its_row(d, path, value, message):
    import pyarrow as pa
    import pyarrow.parquet as pq

    shard = _shard(d)
    table = pq.read_table(shard)
    episodes = table.column("episode").to_pylist()
    i = next(i for i, e in enumerate(episodes) if json.loads(e)["samples"])
    ep = json.loads(episodes[i])
    node = ep
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    episodes[i] = json.dumps(ep)
    pq.write_table(table.set_column(table.column_names.index("episode"), "episode", pa.array(episodes, pa.string())), shard)
    one_line(curate(d), f"{shard}: row {i + 1}: episode", message)   # (the row, whatever its id)


def test_a_shard_column_of_another_type_is_one_line(d):
    import pyarrow as pa
    import pyarrow.parquet as pq

    shard = _shard(d)
    table = pq.read_table(shard)
    table = table.set_column(table.column_names.index("episode"), "episode", pa.array(range(table.num_rows), pa.int64()))
    pq.write_table(table, shard)
    one_line(curate(d), str(shard), "column 'episode' holds int64, not string values")


# -- curate's judge: inputs first, the model only for a pair ------------------------------------------------

class _Loads:
    def __init__(self, monkeypatch):
        from reflectevo.backends import registry

        self.built, real = [], registry.make_backend

        def counting(name, preset, *a, **kw):
            self.built.append(name)
            return real(name, preset, *a, **kw)

        monkeypatch.setattr(registry, "make_backend", counting)   # curate's judge reads it at its first pair


def test_curate_checks_every_shard_before_loading_the_judge(d, monkeypatch):
    loads = _Loads(monkeypatch)
    shard = _shard(d)
    shard.write_bytes(shard.read_bytes()[:100])      # cut short
    one_line(curate(d), str(shard))
    assert loads.built == []                          # no judge loaded for a damaged input


def test_curate_without_a_pair_to_judge_loads_no_judge(d, monkeypatch, tmp_path):
    """Episodes with at most one fixing reflection per item: no Dpref pair, so the judge never loads; its
    record (preset, kind, prompt version) is still in stats.json."""
    from reflectevo.generation.run import write_shards
    from reflectevo.episodes.shards import iter_episodes

    loads = _Loads(monkeypatch)
    eps = []
    for ep in iter_episodes(d / "raw"):
        fixing = [s for s in ep["samples"] if s["trial2"]["correct"]]
        ep["samples"] = [s for s in ep["samples"] if not s["trial2"]["correct"]] + fixing[:1]
        eps.append(ep)
    write_shards(d / "raw", eps, 100)
    r = curate(d)
    assert r.exit_code == 0, r.output
    stats = json.loads((d / "curated/stats.json").read_text())
    assert loads.built == [] and stats["counts"]["dpref_train"] == stats["counts"]["dpref_eval"] == 0
    assert stats["judge"]["kind"] == "likelihood" and stats["judge"]["preset"] == "scripted"


def test_curate_with_pairs_loads_the_judge_once(d, monkeypatch):
    loads = _Loads(monkeypatch)
    r = curate(d)
    assert r.exit_code == 0, r.output
    stats = json.loads((d / "curated/stats.json").read_text())
    assert loads.built == ["scripted"]
    assert stats["counts"]["dpref_train"] + stats["counts"]["dpref_eval"] + stats["drops"].get("judge_inconsistent", 0) > 0


def test_a_likelihood_judge_on_a_backend_that_cannot_score_is_refused_first(d, monkeypatch):
    loads = _Loads(monkeypatch)
    p = yaml.safe_load((d / "params.yaml").read_text())
    p["models"]["served"] = {"source": "api", "backend": "openai", "api_model": "m"}
    p["model"] = "served"
    (d / "params.yaml").write_text(yaml.safe_dump(p))
    one_line(curate(d), "curate.judge: likelihood scores continuations", "backend 'openai' of models.served cannot")
    assert loads.built == []


# -- evaluate: no silent skips -------------------------------------------------------------------------------

@pytest.mark.parametrize("damage,file,message", [
    (lambda m: (m / "adapter_config.json").write_text('{"peft_type": "LO'), "adapter_config.json", ":1: malformed JSON"),
    (lambda m: (m / "adapter_config.json").unlink(), "adapter_config.json", "not found (an interrupted train or copy?)"),
    (lambda m: (m / "model_card.json").unlink(), "", "no model_card.json"),
    (lambda m: (m / "model_card.json").write_text("{"), "model_card.json", "malformed JSON"),
    (lambda m: (m / "model_card.json").write_text("[]"), "model_card.json", "expected a JSON object, got list"),
    (lambda m: (m / "adapter_model.safetensors").write_bytes((m / "adapter_model.safetensors").read_bytes()[:-7]),
     "adapter_model.safetensors", "(truncated or damaged)"),
    (lambda m: (m / "adapter_model.safetensors").unlink(), "", "no weights"),
    (lambda m: (m / "model_card.json").write_text(json.dumps({**json.loads((m / "model_card.json").read_text()),
                                                               "status": "training"})),
     "model_card.json", "status 'training' is neither 'trained' nor"),
    (lambda m: (m / "model_card.json").write_text(json.dumps({**json.loads((m / "model_card.json").read_text()),
                                                               "base": {"preset": "tiny-random"}})),
     "model_card.json", "trained on preset 'tiny-random', not the params' model 'scripted'"),
])
def test_evaluate_refuses_a_damaged_setting_folder(d, damage, file, message):
    """An interrupted copy of models/one_stage was skipped as "no adapter at models/one_stage", exit 0: the
    comparison silently lost a row. Now: one line naming the file, before any model, nothing written."""
    folder = d / "models/one_stage"
    damage(folder)
    outputs = (d / "metrics/eval.json", d / "eval", d / "plots")
    before = snapshot(*outputs)
    one_line(evaluate(d), str(folder / file), message)
    assert snapshot(*outputs) == before


def test_evaluate_skips_only_no_training_data_and_disabled_and_says_why(d):
    (d / "models/rloo").mkdir()
    (d / "models/rloo/model_card.json").write_text(json.dumps({"setting": "rloo", "status": "disabled",
                                                               "reason": "not enabled (train.rl.enabled: false)"}))
    r = evaluate(d)
    assert r.exit_code == 0, r.output
    report = json.loads((d / "metrics/eval.json").read_text())
    assert "one_stage" in report["systems"]
    assert report["skipped"]["two_stage"] == "no training data: D+ is empty"
    assert report["skipped"]["rloo"] == "disabled: not enabled (train.rl.enabled: false)"
    assert report["skipped"]["dpo_pm"].startswith("no adapter at") and "no such folder" in report["skipped"]["dpo_pm"]
    page = d / "report.html"
    assert invoke(stage("report"), "--metrics", d / "metrics/eval.json", "--out", page).exit_code == 0
    html = page.read_text()
    for setting, why in report["skipped"].items():   # every skip and its reason on the page
        assert f"<code>{setting}</code>: {why.replace(chr(39), '&#x27;')}" in html


# -- the report: diagnostics of the wrong shape --------------------------------------------------------------

@pytest.mark.parametrize("where,change,message", [
    ("curated/stats.json", lambda s: s["diagnostics"]["per_demand"][next(iter(s["diagnostics"]["per_demand"]))].pop(
        "trial2_format_failures"), "trial2_format_failures is missing"),
    ("curated/stats.json", lambda s: s["diagnostics"].update(overall=[1]), "diagnostics.overall must be an object"),
    ("curated/stats.json", lambda s: s["diagnostics"]["overall"].update(stop_reasons={"trial1": 3}),
     "stop_reasons must map each phase to an object"),
    ("metrics/eval.json", lambda s: s["diagnostics"]["base_reflect"].pop("overall"),
     "diagnostics.base_reflect.overall must be an object, got NoneType"),
    ("metrics/eval.json", lambda s: s["diagnostics"]["base_reflect"]["overall"].update(fix_rate="high"),
     "fix_rate must be a number or null"),
])
def test_report_refuses_diagnostics_of_the_wrong_shape(d, where, change, message):
    data = json.loads((d / where).read_text())
    change(data)
    (d / where).write_text(json.dumps(data))
    out = d / "report/index.html"
    one_line(invoke(stage("report"), "--metrics", d / "metrics/eval.json", "--stats", d / "curated/stats.json",
                    "--out", out), str(d / where), message)
    assert not out.exists()


# -- self-evolution ------------------------------------------------------------------------------------------

def _evolve(*args):
    return invoke(stage("evolve"), *[str(a) for a in args])


def test_evolve_curate_reads_the_previous_data_before_anything_is_written(d):
    """A damaged previous data file was read after curate had run and the data folder had been emptied."""
    p = d / "params.yaml"
    p.write_text(p.read_text().replace("data: new", "data: union"))
    it2 = d / "evolve/it2"
    assert _evolve("curate", "--iteration", "it2", "--previous-data", d / "curated", "--out", it2, "--params", p).exit_code == 0
    before = snapshot(it2)
    (d / "curated/dplus_train.jsonl").unlink()
    (d / "curated/dplus_train.jsonl").mkdir()
    one_line(_evolve("curate", "--iteration", "it2", "--previous-data", d / "curated", "--out", it2, "--params", p),
             f"{d / 'curated/dplus_train.jsonl'}: is a folder")
    assert snapshot(it2) == before
    (d / "curated/dplus_train.jsonl").rmdir()
    (d / "curated/dplus_train.jsonl").write_text('{"id": "x", "item_id": "i", "task": "rg/chain_sum"}\n')
    one_line(_evolve("curate", "--iteration", "it2", "--previous-data", d / "curated", "--out", it2, "--params", p),
             f"{d / 'curated/dplus_train.jsonl'}:1: missing field 'question'")
    assert snapshot(it2) == before


def test_evolve_generate_with_a_card_without_adapters_is_one_line(d):
    card = d / "models/one_stage/model_card.json"
    data = json.loads(card.read_text())
    del data["adapters"]
    card.write_text(json.dumps(data))
    one_line(_evolve("generate", "--iteration", "it2", "--previous", d / "models", "--out", d / "evolve/it2",
                     "--params", d / "params.yaml", "--sources", d / "sources/train.jsonl"),
             str(card), "'adapters' must map each role to its sub-folder")


@pytest.mark.parametrize("rel,change,message", [
    ("metrics/curate.json", lambda m: m["counts"].update(dplus_eval=[True]), "counts must be an object of non-negative"),
    ("metrics/eval.json", lambda m: m["systems"]["base_reflect"].update(overall=[]), "systems.base_reflect.overall must be"),
    ("metrics/generate.json", lambda m: m.update(diagnostics=[1]), "diagnostics.overall must be an object"),
    ("metrics/train/one_stage.json", lambda m: m.update(n_train="3"), "n_train must be a number or null"),
])
def test_evolve_summary_checks_the_iterations_outputs(d, rel, change, message):
    data = json.loads((d / rel).read_text())
    change(data)
    (d / rel).write_text(json.dumps(data))
    out = d / "metrics/evolve.json"
    one_line(_evolve("summary", "--params", d / "params.yaml", "--metrics-dir", d / "metrics", "--eval-dir", d / "eval",
                     "--evolve-dir", d / "evolve", "--out", out, "--plots", d / "plots/evolve.json"), str(d / rel), message)
    assert not out.exists()


def test_evolve_summary_predictions_need_item_and_verdict(d):
    (d / "eval/predictions.jsonl").write_text('{"system": "one_stage", "t2_correct": true}\n')
    one_line(_evolve("summary", "--params", d / "params.yaml", "--metrics-dir", d / "metrics", "--eval-dir", d / "eval",
                     "--evolve-dir", d / "evolve", "--out", d / "m.json", "--plots", d / "p.json"),
             f"{d / 'eval/predictions.jsonl'}:1: 'item_id' must be a string")


def test_evolve_note_is_the_settings_own_skip_not_the_whole_table():
    """Iteration 1's note was the main evaluation's whole `skipped` table (other settings' reasons), shown as a
    Python dict on the page."""
    from reflectevo.evolve import iteration_row

    main = {"systems": {}, "skipped": {"rloo": "disabled: not enabled", "dpo_pref": "no training data: Dpref is empty"}}
    assert "note" not in iteration_row(1, None, None, main, "one_stage")
    assert iteration_row(1, None, None, main, "dpo_pref")["note"] == "no training data: Dpref is empty"
    assert iteration_row(2, None, None, {"skipped": "iteration 2's one_stage adapter is not trained"},
                         "one_stage")["note"] == "iteration 2's one_stage adapter is not trained"


def test_evolve_chain_on_a_params_file_that_is_not_text(d):
    p = d / "params.yaml"
    p.write_bytes(b"S\x81\xe1\x0b\x8bWw")
    one_line(_evolve("chain", "3", "--params", p), str(p))
    assert p.read_bytes() == b"S\x81\xe1\x0b\x8bWw"


# -- demo, CLI commands --------------------------------------------------------------------------------------

@pytest.mark.parametrize("row,message", [
    ('{"id": "a", "task": "rg/chain_sum", "answer": "1"}', ":1: item 'a' has no 'question' field"),
    ('{"id": {"x": 1}, "task": "rg/chain_sum", "question": "q", "answer": "1"}', ":1: item {'x': 1}: field 'id' must be"),
])
def test_demo_prepare_checks_the_excluded_sources(d, row, message):
    src = d / "sources/test.jsonl"
    src.write_text(row + "\n")
    one_line(invoke(stage("demo"), "prepare", "--params", d / "params.yaml", "--exclude", d / "sources",
                    "--out", d / "demo/sources"), str(src), message)
    assert not (d / "demo").exists()


@pytest.mark.parametrize("stage_name", ["prepare", "demo"])
def test_task_options_the_generator_refuses_name_the_params_key(d, stage_name):
    p = yaml.safe_load((d / "params.yaml").read_text())
    p["prepare"]["tasks"][0]["options"].update(min_terms=9, max_terms=2)     # reasoning-gym asserts on it
    (d / "params.yaml").write_text(yaml.safe_dump(p))
    args = (["--params", d / "params.yaml", "--out", d / "s2"] if stage_name == "prepare" else
            ["prepare", "--params", d / "params.yaml", "--exclude", d / "sources", "--out", d / "s2"])
    one_line(invoke(stage(stage_name), *args), "prepare.tasks[0].options: task rg/chain_sum: bad generator options",
             "max_terms must be >= min_terms")
    assert not (d / "s2").exists()


def test_a_preset_name_that_is_not_a_string_is_one_line(d):
    p = yaml.safe_load((d / "params.yaml").read_text())
    p["model"] = {"value": "scripted"}
    (d / "params.yaml").write_text(yaml.safe_dump(p))
    one_line(invoke(cli, "params", "check", d / "params.yaml"), "model: expected a preset name (a string), got {'value': 'scripted'}")


@pytest.mark.parametrize("change,message", [
    (lambda f: (f / "model_card.json").write_text(""), "model_card.json:1: malformed JSON"),
    (lambda f: (f / "README.md").write_text("---\nlicense: [\n---\n"), "README.md: malformed metadata block"),
    (lambda f: (f / "adapter_model.safetensors").write_bytes(b"\x08"), "adapter_model.safetensors: 1 bytes: too short"),
])
def test_publish_refuses_a_damaged_folder(d, change, message):
    folder = d / "models/one_stage"
    (folder / "README.md").write_text("---\nlicense: apache-2.0\nlibrary_name: peft\npipeline_tag: text-generation\n---\n")
    change(folder)
    one_line(invoke(cli, "publish", folder, "--repo-id", "someone/x", "--dry-run"), str(folder), message)


def test_metrics_and_convert_refuse_mistyped_rows(d):
    preds = d / "eval/predictions.jsonl"
    rows = [json.loads(x) for x in preds.read_text().splitlines()]
    rows[3]["task"] = []
    preds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    one_line(invoke(cli, "metrics", preds), f"{preds}:4: field 'task' must be a string, got list")
    dplus = d / "curated/dplus_train.jsonl"
    rows = [json.loads(x) for x in dplus.read_text().splitlines()]
    rows[0]["choices"] = 0.07
    dplus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    one_line(invoke(cli, "convert", "--to", "reflectevo", "--kind", "dplus", dplus, d / "out.jsonl"),
             f"{dplus}:1: field 'choices' must be a list of strings or null")
    assert not (d / "out.jsonl").exists()


def test_train_refuses_a_mistyped_row_before_touching_its_folder(d):
    """A D± row whose trial1 is not text reached prompt building after the setting's folder was removed."""
    rows = [json.loads(x) for x in (d / "curated/dpm_train.jsonl").read_text().splitlines()]
    assert rows, "the base run has D± pairs"
    rows[0]["trial1"] = {"text": "x"}
    data = d / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    fake_adapter(d / "models/dpo_pm", "dpo_pm", roles=("reflector",))
    before = snapshot(d / "models/dpo_pm")
    tiny = scripted_params(d / "tiny.yaml", model="tiny-random")
    one_line(invoke(stage("train"), "--setting", "dpo_pm", "--params", tiny, "--train-data", data,
                    "--out", d / "models/dpo_pm", "--metrics", d / "m.json"),
             f"{data}:1: trial1: expected a string, got dict")
    assert snapshot(d / "models/dpo_pm") == before and not (d / "m.json").exists()


def test_train_refuses_an_unknown_task_in_a_one_stage_row(d):
    rows = [json.loads(x) for x in (d / "curated/dplus_train.jsonl").read_text().splitlines()]
    rows[0]["task"] = "rg/chain_summ"
    data = d / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tiny = scripted_params(d / "tiny.yaml", model="tiny-random")
    one_line(invoke(stage("train"), "--setting", "one_stage", "--params", tiny, "--train-data", data,
                    "--out", d / "models/x", "--metrics", d / "m.json"), f"{data}:1: unknown task 'rg/chain_summ'")
    assert not (d / "models/x").exists()


def test_an_empty_demand_list_is_refused_before_any_model(d):
    """generate.demands: [] passed the checks and divided by zero in the first chunk, after the model loaded."""
    p = yaml.safe_load((d / "params.yaml").read_text())
    p["generate"]["demands"] = []
    (d / "params.yaml").write_text(yaml.safe_dump(p))
    before = snapshot(d / "raw", d / "metrics/generate.json")
    one_line(generate(d, d / "sources/train.jsonl"), "generate.demands: must not be empty")
    assert snapshot(d / "raw", d / "metrics/generate.json") == before
    one_line(invoke(cli, "params", "check", d / "params.yaml"), "generate.demands")


def test_generate_checks_an_earlier_runs_shards_before_any_model(d, monkeypatch):
    """data/raw's shards (persisted, reused by key) were read only after every new episode was generated."""
    from reflectevo.generation import backends

    built = []
    real = backends.make_backend
    monkeypatch.setattr(backends, "make_backend", lambda *a, **kw: built.append(a[0]) or real(*a, **kw))
    import pyarrow as pa
    import pyarrow.parquet as pq

    shard = _shard(d)      # readable keys, one episode that is not JSON: found only when the shard is read whole
    table = pq.read_table(shard)
    episodes = table.column("episode").to_pylist()
    episodes[0] = "{not json"
    pq.write_table(table.set_column(table.column_names.index("episode"), "episode", pa.array(episodes, pa.string())),
                   shard)
    src = d / "more.jsonl"   # new items: there is something to generate
    rows = [json.loads(x) for x in (d / "sources/train.jsonl").read_text().splitlines()]
    src.write_text("".join(json.dumps({**r, "id": f"new-{r['id']}"}) + "\n" for r in rows))
    one_line(generate(d, src), f"{shard}: row 1: malformed episode JSON")
    assert built == [] and not list((d / "raw").glob("journal*"))


def test_a_setting_the_evaluation_leaves_out_is_not_checked(d):
    """demo evaluate --protocol P with `systems`: a damaged folder of a setting it does not evaluate is no error."""
    (d / "models/dpo_pm").mkdir()
    (d / "models/dpo_pm/model_card.json").write_text("{")
    p = yaml.safe_load((d / "params.yaml").read_text())
    p["demo"]["protocols"]["oracle"]["systems"] = ["base_reflect", "one_stage"]
    (d / "params.yaml").write_text(yaml.safe_dump(p))
    r = invoke(stage("demo"), "evaluate", "--params", d / "params.yaml", "--protocol", "oracle", "--sources",
               d / "sources/test.jsonl", "--models", d / "models", "--predictions", d / "demo/p.jsonl",
               "--metrics", d / "demo/m.json", "--plots", d / "demo/plots")
    assert r.exit_code == 0, r.output
    report = json.loads((d / "demo/m.json").read_text())
    assert set(report["systems"]) == {"base_reflect", "one_stage"} and report["skipped"] == {}
    p["demo"]["protocols"]["oracle"]["systems"] = ["dpo_pm"]
    (d / "params.yaml").write_text(yaml.safe_dump(p))
    one_line(invoke(stage("demo"), "evaluate", "--params", d / "params.yaml", "--protocol", "oracle", "--sources",
                    d / "sources/test.jsonl", "--models", d / "models", "--predictions", d / "demo/p.jsonl",
                    "--metrics", d / "demo/m.json", "--plots", d / "demo/plots"), str(d / "models/dpo_pm/model_card.json"))
