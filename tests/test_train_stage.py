"""stages/train.py on bad input: a corrupt or unusable training row fails with file:line, before any training;
the default checkpoint folder sits beside the models folder, outside the DVC output."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml
from helpers import tiny_params_dict
from test_training import dplus_rows, dpm_rows, item_rows
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]


def _app():
    spec = importlib.util.spec_from_file_location("stage_train", ROOT / "stages" / "train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.app


def _run(tmp_path, setting, lines, *extra):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params_dict(ROOT / "params.yaml"), sort_keys=False))
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(lines) + "\n")
    return CliRunner().invoke(_app(), ["--setting", setting, "--params", str(params), "--train-data", str(data),
                                       "--out", str(tmp_path / "models" / setting),
                                       "--metrics", str(tmp_path / "m.json"), *extra])


def _broken(rows, i, **change):
    rows = [dict(r) for r in rows]
    rows[i].update(change)
    for k in [k for k, v in change.items() if v is None]:
        del rows[i][k]
    return [json.dumps(r) for r in rows]


@pytest.mark.parametrize("setting,lines,message", [
    ("one_stage", [json.dumps(dplus_rows(1)[0]), '{"id": "s1", "item_id": "item-1", "task'],
     "rows.jsonl:2: malformed JSON line"),
    ("two_stage", [*_broken(dplus_rows(3), 2, reflection=None)[:2], "", _broken(dplus_rows(3), 2, reflection=None)[2]],
     "rows.jsonl:4: missing field 'reflection' (a two_stage training row)"),
    ("one_stage", _broken(dplus_rows(2), 1, trial2=["not", "text"]), "rows.jsonl:2: trial2: expected a string, got list"),
    ("dpo_pm", _broken(dpm_rows(2), 0, chosen="a reflection"), "rows.jsonl:1: chosen.reflection: expected a string"),
    ("dpo_pref", _broken(dpm_rows(2), 1, rejected=None), "rows.jsonl:2: missing field 'rejected'"),
    ("sft_qa", _broken(item_rows(2), 1, answer=None), "rows.jsonl:2: missing field 'answer'"),
    ("sft_qa", [json.dumps(item_rows(1)[0]), "[1, 2]"], "rows.jsonl:2: expected a JSON object"),
])
def test_a_corrupt_training_row_names_file_and_line(tmp_path, setting, lines, message):
    res = _run(tmp_path, setting, lines)
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "m.json").exists() and not (tmp_path / "models").exists()


def test_default_checkpoints_sit_beside_the_models_folder(tmp_path, monkeypatch):
    import reflectevo.training.run as T

    seen = {}

    def fake_train_setting(*args, checkpoint_dir=None, **kwargs):
        seen["checkpoint_dir"] = checkpoint_dir
        return {"setting": args[0], "trained": False, "reason": "test"}

    monkeypatch.setattr(T, "train_setting", fake_train_setting)
    rows = [json.dumps(r) for r in dplus_rows(1)]
    assert _run(tmp_path, "one_stage", rows).exit_code == 0
    assert seen["checkpoint_dir"] == tmp_path / "checkpoints" / "one_stage"
    assert _run(tmp_path, "one_stage", rows, "--checkpoints", "none").exit_code == 0
    assert seen["checkpoint_dir"] is None
    assert _run(tmp_path, "one_stage", rows, "--checkpoints", str(tmp_path / "ck")).exit_code == 0
    assert seen["checkpoint_dir"] == tmp_path / "ck"
