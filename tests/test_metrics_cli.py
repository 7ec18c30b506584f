"""`reflectevo metrics`: count.py-compatible numbers, the intrinsic protocol, our formats, Wilson intervals."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from reflectevo.cli import app
from reflectevo.jsonio import write_jsonl
from reflectevo.metrics import by_task, turn_metrics, wilson_interval

runner = CliRunner()


def run_metrics(*args: str) -> dict[str, Any]:
    r = runner.invoke(app, ["metrics", *args])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def fails(*args: str) -> str:
    r = runner.invoke(app, ["metrics", *args])
    assert r.exit_code == 2
    msg = r.stderr.strip()
    assert len(msg.splitlines()) == 1
    return msg


# --------------------------------------------------------------------------------------------------
# Wilson intervals


def test_wilson_known_values() -> None:
    assert wilson_interval(5, 10) == (0.2366, 0.7634)
    # k = 0: lower bound 0, upper z^2 / (n + z^2)
    assert wilson_interval(0, 10) == (0.0, round(1.96**2 / (10 + 1.96**2), 4)) == (0.0, 0.2775)
    assert wilson_interval(10, 10) == (0.7225, 1.0)
    assert wilson_interval(3, 10) == (0.1078, 0.6032)
    assert wilson_interval(50, 100) == (0.4038, 0.5962)
    # 99%: centre 0.5, half-width 2.576 * sqrt(0.25/500 + 2.576**2/(4 * 500**2)) / (1 + 2.576**2/500) = 0.05722
    lo, hi = wilson_interval(250, 500, z=2.576)
    assert (lo, hi) == (0.4428, 0.5572) and math.isclose(lo + hi, 1.0)
    assert wilson_interval(0, 0) is None
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_existing_outputs_unchanged_and_intervals_opt_in() -> None:
    pairs = [(True, True), (True, False), (False, True), (False, True), (False, False)]
    plain = turn_metrics(pairs)
    assert set(plain) == {"n", "acc_t1", "acc_t2", "delta", "delta_i2c", "delta_c2i"}
    with_ci = turn_metrics(pairs, intervals=True)
    assert {k: with_ci[k] for k in plain} == plain
    assert with_ci["acc_t1_ci"] == list(wilson_interval(2, 5)) and with_ci["acc_t2_ci"] == list(wilson_interval(3, 5))
    assert turn_metrics([], intervals=True)["acc_t1_ci"] is None
    rows = [{"task": "a", "t1_correct": False, "t2_correct": True}]
    assert "acc_t1_ci" not in by_task(rows)["overall"] and "acc_t1_ci" in by_task(rows, intervals=True)["per_task"]["a"]


# --------------------------------------------------------------------------------------------------
# ReflectEvo results


def test_example_raw_file_matches_a_hand_count(shared_data: Path) -> None:
    """Hand count of example_Reflection_raw.jsonl: 10 LogiQA records, every trial 1 wrong; the first retry
    is right for ids 2, 6 and 10 (5 of the 20 retries are right: both of ids 2 and 6, the first of id 10)."""
    path = shared_data / "reflectevo" / "examples" / "example_Reflection_raw.jsonl"
    out = run_metrics(str(path), "--task", "logiqa")
    assert out["format"] == "reflectevo" and out["records"] == "raw" and out["protocol"] == "oracle"
    assert out["count_py"] == {"first_output_correct": 0, "acc@t1": "0.00%",
                               "second_output_correct": 3, "acc@t2": "30.00%"}  # what count.py prints
    assert {k: out[k] for k in ("n", "acc_t1", "acc_t2", "delta", "delta_i2c", "delta_c2i")} == \
        {"n": 10, "acc_t1": 0.0, "acc_t2": 0.3, "delta": 0.3, "delta_i2c": 0.3, "delta_c2i": 0.0}
    assert out["acc_t1_ci"] == [0.0, 0.2775] and out["acc_t2_ci"] == [0.1078, 0.6032]
    assert out["task"] == "reflectevo/logiqa" and "per_task" not in out
    # explicit --format gives the same; intrinsic is the same here because no trial 1 was right
    assert run_metrics(str(path), "--format", "reflectevo", "--task", "logiqa") == out
    intrinsic = run_metrics(str(path), "--protocol", "intrinsic")
    assert intrinsic["acc_t2"] == 0.3 and intrinsic["delta_c2i"] == 0.0 and "count_py" not in intrinsic


def raw(rid: int, t1: bool, *t2: bool) -> dict[str, Any]:
    out = [{"generated_answer": "A", "reflections": [], "scratchpad": "x", "is_correct": t1, "trail": 1}]
    out += [{"generated_answer": "B", "reflections": ["r"], "scratchpad": "y", "is_correct": c, "trail": 2} for c in t2]
    return {"id": rid, "question": "q", "answer": "a", "output": out}


@pytest.fixture()
def their_results(tmp_path: Path) -> Path:
    path = tmp_path / "logiqa_COT-generated_0_test_.jsonl"
    write_jsonl(path, [
        raw(1, True, False),        # right, then a (hypothetical) wrong second answer
        raw(2, False, True, False),  # fixed by the first retry
        raw(3, False, False, True),  # only the second retry is right: count.py ignores it
        raw(4, False),               # no retry at all
        raw(5, True),                # right, no retry
    ])
    return path


def test_oracle_reproduces_count_py(their_results: Path) -> None:
    out = run_metrics(str(their_results))
    assert out["count_py"] == {"first_output_correct": 2, "acc@t1": "40.00%",
                               "second_output_correct": 1, "acc@t2": "60.00%"}
    assert (out["n"], out["acc_t1"], out["acc_t2"], out["delta"]) == (5, 0.4, 0.6, 0.2)
    assert (out["delta_i2c"], out["delta_c2i"]) == (0.2, 0.0)
    assert out["task"] == "reflectevo/logiqa"  # from their run.py file name


def test_intrinsic_counts_second_answers_after_a_right_first(their_results: Path) -> None:
    out = run_metrics(str(their_results), "--protocol", "intrinsic")
    # t2: F (1: c->i), T (2), F (3: first retry only), F (4: no retry -> t1), T (5: no retry -> t1)
    assert (out["acc_t1"], out["acc_t2"], out["delta"], out["delta_i2c"], out["delta_c2i"]) == (0.4, 0.4, 0.0, 0.2, 0.2)


# --------------------------------------------------------------------------------------------------
# our formats


def test_our_predictions_per_system_and_task(tmp_path: Path) -> None:
    rows = []
    for system, flips in (("base_reflect", [(False, True), (True, True), (False, False), (True, False)]),
                          ("one_stage", [(False, True), (False, True), (True, True), (True, True)]),
                          ("sft_qa", [(True, True), (False, False), (True, True), (True, True)])):
        for i, (t1, t2) in enumerate(flips):
            rows.append({"system": system, "item_id": f"i{i}", "task": "t/a" if i % 2 else "t/b",
                         "t1_correct": t1, "t2_correct": t2})
    path = tmp_path / "predictions.jsonl"
    write_jsonl(path, rows)
    oracle = run_metrics(str(path))
    assert oracle["format"] == "ours" and oracle["records"] == "predictions"
    base = oracle["systems"]["base_reflect"]
    assert (base["acc_t1"], base["acc_t2"], base["delta_c2i"]) == (0.5, 0.75, 0.0)  # oracle: a right t1 stays right
    assert set(base["per_task"]) == {"t/a", "t/b"} and base["per_task"]["t/b"]["acc_t2"] == 0.5
    assert oracle["systems"]["one_stage"]["acc_t2"] == 1.0
    sft = oracle["systems"]["sft_qa"]  # Acc@t1 only, as in metrics/eval.json
    assert sft["acc_t1"] == 0.75 and sft["acc_t2"] is None and sft["per_task"]["t/a"]["delta"] is None
    intrinsic = run_metrics(str(path), "--format", "ours", "--protocol", "intrinsic")
    assert (intrinsic["systems"]["base_reflect"]["acc_t2"], intrinsic["systems"]["base_reflect"]["delta_c2i"]) == \
        (0.5, 0.25)
    # paired statistics on the same items, as in metrics/eval.json
    assert base["mcnemar_t1_t2"] == {"n": 4, "b": 1, "c": 0, "p": 1.0} and len(base["delta_ci"]) == 2
    vs = oracle["systems"]["one_stage"]["vs_base_reflect"]
    assert (vs["n"], vs["b"], vs["c"]) == (4, 1, 0) and "vs_base_reflect" not in base and "vs_base_reflect" not in sft


def test_our_episodes_file_and_folder(tmp_path: Path) -> None:
    def ep(i: int, task: str, t1: bool, *t2: bool) -> dict[str, Any]:
        return {"episode_id": f"e{i}", "item_id": f"i{i}", "task": task, "trial1": {"correct": t1},
                "samples": [{"sample_idx": j, "trial2": {"correct": c}} for j, c in enumerate(t2)]}

    folder = tmp_path / "raw"
    write_jsonl(folder / "episodes-00000-of-00002.jsonl", [ep(1, "t/a", True), ep(2, "t/a", False, True, False)])
    write_jsonl(folder / "episodes-00001-of-00002.jsonl", [ep(3, "t/b", False, False, True), ep(4, "t/b", False)])
    out = run_metrics(str(folder))
    assert out["records"] == "episodes" and out["n"] == 4
    assert (out["acc_t1"], out["acc_t2"]) == (0.25, 0.5)  # only sample 0's retry counts
    assert out["per_task"]["t/a"]["acc_t2"] == 1.0 and out["per_task"]["t/b"]["acc_t2"] == 0.0
    one = run_metrics(str(folder / "episodes-00000-of-00002.jsonl"), "--format", "ours")
    assert one["n"] == 2 and one["task"] == "t/a"


# --------------------------------------------------------------------------------------------------
# bad input


def test_metrics_errors(tmp_path: Path, their_results: Path) -> None:
    assert "looks like 'reflectevo' raw, not --format ours" in fails(str(their_results), "--format", "ours")
    assert "unknown protocol 'orcale'" in fails(str(their_results), "--protocol", "orcale")
    assert "unknown format 'theirs'" in fails(str(their_results), "--format", "theirs")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(raw(1, True)) + "\n{oops\n")
    assert fails(str(bad)).startswith(f"error: {bad}:2: malformed JSON")
    write_jsonl(bad, [{"id": 1, "question": "q"}])
    assert "not a results file" in fails(str(bad))
    write_jsonl(bad, [{"id": 1, "output": [{"generated_answer": "A"}]}])
    assert f"{bad}:1: output[0]: missing field 'is_correct'" in fails(str(bad))
    assert "file not found" in fails(str(tmp_path / "nope.jsonl"))
