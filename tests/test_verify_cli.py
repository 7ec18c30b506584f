"""`reflectevo verify`: verdict lines and a summary; one clear error line (exit 2) on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from reflectevo.cli import app


def _run(*args: str):
    return CliRunner().invoke(app, ["verify", *args])


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.fixture()
def yaml_task(tmp_path: Path) -> Path:
    (tmp_path / "rows.jsonl").write_text(json.dumps({"id": "q1", "question": "2+2?", "answer": "4"}) + "\n"
                                         + json.dumps({"id": "q2", "question": "3+3?", "answer": "6"}) + "\n")
    path = tmp_path / "arith.yaml"
    path.write_text("answer_type: number\nsource: rows.jsonl\n")
    return path


def test_verify_outputs_verdicts_and_summary(tmp_path: Path, yaml_task: Path) -> None:
    preds = _write(tmp_path / "p.jsonl", [json.dumps({"id": "q1", "prediction": "Thought: easy.\nAction: Finish[4]"}),
                                         json.dumps({"id": "q2", "prediction": "Action: Finish[7]"})])
    r = _run(str(yaml_task), str(preds))
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert rows[0] == {"id": "q1", "extracted": "4", "correct": True, "score": 1.0, "error": None}
    assert rows[1]["correct"] is False and rows[1]["extracted"] == "7"
    assert rows[-1] == {"summary": True, "n": 2, "correct": 1, "accuracy": 0.5}


def test_verify_mbpp_runs_code_in_the_sandbox(tmp_path: Path, shared_data: Path, monkeypatch) -> None:
    monkeypatch.setenv("REFLECTEVO_DATA", str(shared_data))
    code = "def remove_Occ(s,ch):\n    return s.replace(ch, '', 1)[::-1].replace(ch, '', 1)[::-1]"
    preds = _write(tmp_path / "p.jsonl", [json.dumps({"id": "mbpp-11", "prediction": f"Action: [BEGIN]\n{code}\n[END]"}),
                                         json.dumps({"id": "mbpp-12", "prediction": "[BEGIN]import os\nos._exit(0)[END]"})])
    r = _run("mbpp", str(preds), "--split", "test")
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x.get("correct") for x in rows[:2]] == [True, False] and rows[1]["error"]
    assert rows[-1]["accuracy"] == 0.5


@pytest.mark.parametrize("lines,message", [
    (['{"id": "q1", "prediction": "Finish[4]"}', '{"id": "q2", "prediction": '], r"p.jsonl:2: malformed JSON line"),
    (['{"id": "q1"}'], r"p.jsonl:1: missing field 'prediction'"),
    (['{"prediction": "Finish[4]"}'], r"p.jsonl:1: missing field 'id'"),
    (['{"id": "q9", "prediction": "Finish[4]"}'], r"p.jsonl:1: unknown id 'q9'"),
    (['{"id": "q1", "prediction": 4}'], r"field 'prediction' must be a string"),
])
def test_verify_bad_input(tmp_path: Path, yaml_task: Path, lines: list[str], message: str) -> None:
    r = _run(str(yaml_task), str(_write(tmp_path / "p.jsonl", lines)))
    assert r.exit_code == 2
    assert r.stdout == ""  # nothing half-written
    import re

    assert re.search(message, r.stderr), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_verify_unknown_task_split_and_missing_files(tmp_path: Path, yaml_task: Path) -> None:
    preds = _write(tmp_path / "p.jsonl", ['{"id": "q1", "prediction": "Finish[4]"}'])
    r = _run("logiqq", str(preds))
    assert r.exit_code == 2 and "unknown task 'logiqq'" in r.stderr and "Did you mean 'logiqa'" in r.stderr
    r = _run(str(yaml_task), str(preds), "--split", "dev")
    assert r.exit_code == 2 and "unknown split 'dev'" in r.stderr
    r = _run(str(yaml_task), str(tmp_path / "none.jsonl"))
    assert r.exit_code == 2 and "none.jsonl: file not found" in r.stderr
    r = _run(str(tmp_path / "none.yaml"), str(preds))
    assert r.exit_code == 2 and f"task file {tmp_path / 'none.yaml'} not found" in r.stderr


def test_tasks_lists_sizes_and_sources(shared_data: Path, monkeypatch) -> None:
    monkeypatch.setenv("REFLECTEVO_DATA", str(shared_data))
    r = CliRunner().invoke(app, ["tasks"])
    assert r.exit_code == 0, r.output
    rows = {json.loads(x)["name"]: json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")}
    assert rows["mbpp"]["sizes"]["test"] == 500 and "mbpp_test.jsonl" in rows["mbpp"]["source"]["test"]
    assert rows["logiqa"]["source"]["train"].startswith("online hf:lucasmccabe/logiqa")
    assert rows["bigbench_free"]["sizes"] == {"test": 144}


@pytest.mark.parametrize("task,split,parts", [
    ("mbpp", "test", ["reflectevo/data_source/mbpp_test.jsonl", "benchmarks/reflectevo_mbpp_test.jsonl",
                      "raw.githubusercontent.com/bigai-nlco/ReflectEvo/"]),
    ("logiqa", "train", ["reflectevo/data_source/logiqa_train.jsonl", "hf:lucasmccabe/logiqa"]),
])
def test_items_missing_split_names_task_split_and_places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, task: str,
                                                         split: str, parts: list[str]) -> None:
    monkeypatch.setenv("REFLECTEVO_DATA", str(tmp_path))
    monkeypatch.setenv("REFLECTEVO_OFFLINE", "1")
    monkeypatch.setenv("REFLECTEVO_CACHE", str(tmp_path / "cache"))
    r = CliRunner().invoke(app, ["items", task, "--split", split])
    assert r.exit_code == 2 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1
    assert f"task {task}, split {split}: no local copy" in r.stderr and "$REFLECTEVO_DATA" in r.stderr
    for part in parts:
        assert part in r.stderr, (part, r.stderr)
