"""ReflectEvo <-> ours conversion: the four example files, round trips both ways, CLI and bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from reflectevo.compat import convert as conversion
from reflectevo.compat import fields, jsonstream
from reflectevo.compat import raw as raw_format
from reflectevo.cli import app
from reflectevo.config.sections import CurateConfig
from reflectevo.curation.rows import curate
from reflectevo.errors import ReflectEvoError
from reflectevo.jsonio import read_jsonl, write_jsonl

runner = CliRunner()

FILES = {"raw": "example_Reflection_raw.jsonl", "dplus": "example_D+.jsonl", "dpm": "example_D+-.jsonl",
         "dpref": "example_Dpref.jsonl"}


@pytest.fixture(scope="module")
def examples(shared_data: Path) -> Path:
    return shared_data / "reflectevo" / "examples"


def originals(path: Path) -> list[dict[str, Any]]:
    return [obj for _, obj in jsonstream.iter_json_objects(path)]


def err(result) -> str:
    return result.stderr if result.stderr_bytes is not None else result.output


# --------------------------------------------------------------------------------------------------
# importing the shipped examples


def test_import_raw_example(examples: Path) -> None:
    eps = list(conversion.import_records(examples / FILES["raw"], "raw", task="logiqa"))
    assert len(eps) == 10
    assert [e["item_id"] for e in eps] == ["2", "4", "5", "6", "10", "13", "16", "20", "25", "26"]
    assert {e["task"] for e in eps} == {"reflectevo/logiqa"}
    assert len({e["episode_id"] for e in eps}) == 10
    first = eps[0]
    assert first["item"]["answer"] == "A" and first["meta"]["reflectevo"]["answer"] == "a"  # MC letter upper-cased
    assert len(first["item"]["choices"]) == 4 and first["item"]["choices"][0].startswith("Can hospital")
    t1 = first["trial1"]
    assert t1["extracted"] == "B" and t1["correct"] is False and t1["prompt"] is None
    assert "Observation" not in t1["completion"] and t1["completion"].rstrip().endswith("Action: Finish[B]")
    assert first["meta"]["reflectevo"]["outputs"][0]["observation"] == "\nObservation: Answer is INCORRECT"
    # older field names recorded so export writes them back
    assert "reasoning" in first["meta"]["reflectevo"]["outputs"][0]["keys"]
    assert all(not e["trial1"]["correct"] for e in eps)
    assert all(len(e["samples"]) == 2 for e in eps)
    assert all(s["reflection"]["text"] and s["demand_id"] is None for e in eps for s in e["samples"])
    assert sum(s["trial2"]["correct"] for e in eps for s in e["samples"]) == 5  # 5 of 20 retries right
    fixed = [e["item_id"] for e in eps if e["samples"][0]["trial2"]["correct"]]
    assert fixed == ["2", "6", "10"]  # 3 questions fixed by their first retry


def test_import_dplus_example_keeps_the_leaky_prompt_out(examples: Path) -> None:
    rows = list(conversion.import_records(examples / FILES["dplus"], "dplus"))
    raw = originals(examples / FILES["dplus"])
    assert len(rows) == 5 and [r["id"] for r in rows] == ["1", "2", "3", "4", "5"]
    for row, orig in zip(rows, raw):
        assert row["answer"] == orig["answer"].upper() and row["choices"]
        assert row["trial1_prompt"] == orig["reason_prompt"][0]
        assert row["trial2_prompt"] is None  # reason_prompt[1] leaks the trial-2 answer
        meta = row["meta"]["reflectevo"]
        assert meta["reason_prompt"][1] == orig["reason_prompt"][1] and "leak" not in meta  # kept, with a note
        assert "(BEGIN)" in meta["prompt_note"] and "Answer is CORRECT" in meta["reason_prompt"][1]
        assert fields.prompt_leaks(orig["reason_prompt"][1]) and not fields.prompt_leaks(orig["reason_prompt"][0])
        assert row["reflection"] == orig["reflections"] and row["reflection_prompt"] == orig["reflect_prompt"]
        assert row["trial1_answer"] == orig["first_trial_answer"]
        assert row["trial2_answer"] == orig["second_trial_answer"] and row["trial2_correct"] is True
        assert orig["first_trial_reasoning"] == row["trial1"] + meta["trial1_observation"]
        assert meta["trial1_observation"].endswith("Answer is INCORRECT")
        assert row["item_id"] == fields.derive_item_id(orig["question"])


def test_import_dpm_example(examples: Path) -> None:
    rows = list(conversion.import_records(examples / FILES["dpm"], "dpm"))
    assert len(rows) == 5
    assert len({r["item_id"] for r in rows}) == 1  # one question
    assert all(r["chosen"]["trial2_correct"] and not r["rejected"]["trial2_correct"] for r in rows)
    assert len({r["chosen"]["sample_id"] for r in rows}) == 2  # 2 chosen x 3 rejected, 5 shipped
    assert len({r["rejected"]["sample_id"] for r in rows}) == 3
    assert all(r["chosen"]["reflection_prompt"] == r["rejected"]["reflection_prompt"] for r in rows)
    assert all(r["trial1_prompt"] and "judge" not in r for r in rows)


def test_import_dpref_example_keeps_mojibake(examples: Path) -> None:
    rows = list(conversion.import_records(examples / FILES["dpref"], "dpref"))
    assert len(rows) == 5
    assert all(r["judge"] is None for r in rows)
    assert all(r["chosen"]["trial2_correct"] and r["rejected"]["trial2_correct"] for r in rows)
    assert len({r["chosen"]["sample_id"] for r in rows}) == 1 and len({r["rejected"]["sample_id"] for r in rows}) == 5
    assert "鈥檚" in rows[0]["question"]  # kept as is ...
    assert "mojibake" in rows[0]["meta"]["reflectevo"]  # ... and flagged


# --------------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("kind", list(FILES))
def test_example_round_trip(kind: str, examples: Path, tmp_path: Path) -> None:
    src = examples / FILES[kind]
    ours = tmp_path / "ours.jsonl"
    theirs = tmp_path / "theirs.jsonl"
    again = tmp_path / "again.jsonl"
    conversion.convert(src, ours, kind, "from", task="bigbench")
    conversion.convert(ours, theirs, kind, "to")
    # export(import(x)) reproduces their records (names, key order, verdict lines, ids, lowercase golds)
    assert read_jsonl(theirs) == originals(src)
    conversion.convert(theirs, again, kind, "from", task="bigbench")
    assert read_jsonl(again) == read_jsonl(ours)


def _trial(prompt: str, completion: str, extracted: str | None, correct: bool, error: str | None = None) -> dict:
    return {"prompt": prompt, "completion": completion, "n_prompt_tokens": 11, "n_new_tokens": 7,
            "extracted": extracted, "correct": correct, "score": float(correct), "error": error}


def synthetic_episodes() -> list[dict[str, Any]]:
    """Three episodes in our schema: an MC item fixed by one of two reflections, a code item never fixed,
    and an item right at trial 1."""
    def ep(i: int, item: dict, t1: dict, samples: list[tuple[str, dict]]) -> dict[str, Any]:
        eid = f"ep{i:018d}"
        return {"episode_id": eid, "item_id": item["id"], "task": item["task"], "item_hash": "h", "item": item,
                "model": {"preset": "tiny", "source": "hub:org/tiny", "revision": "r1"}, "dtype": "auto",
                "resolved_dtype": "float32", "prompt_version": "v1-x", "gen": {"k": 2},
                "trial1": t1,
                "samples": [{"sample_id": f"{eid}-{j}", "sample_idx": j, "demand_id": "1-3-2",
                             "reflection": {"prompt": f"reflect on {item['id']}", "text": text, "n_new_tokens": 9,
                                            "sampling": {"temperature": 0.8}},
                             "trial2": t2} for j, (text, t2) in enumerate(samples)]}

    mc = {"id": "mc-1", "task": "demo/mc", "question": "Which is a fruit?\nA. carrot\nB. apple\nC. stone",
          "choices": ["carrot", "apple", "stone"], "answer": "B", "tests": None, "meta": {}}
    code = {"id": "code-1", "task": "demo/code", "question": "Write f returning 1.", "choices": None,
            "answer": "def f(): return 1", "tests": ["assert f() == 1"], "meta": {}}
    easy = {"id": "easy-1", "task": "demo/mc", "question": "2+2?", "choices": None, "answer": "4", "tests": None,
            "meta": {}}
    return [
        ep(1, mc, _trial("p1", "Thought: roots.\nAction: Finish[A]", "A", False), [
            ("The carrot is a root, re-read what a fruit is and check each option.",
             _trial("p2a", "Thought: apples grow on trees.\nAction: Finish[B]", "B", True)),
            ("Stones are minerals, consider the options again one by one before answering.",
             _trial("p2b", "Thought: hmm.\nAction: Finish[C]", "C", False)),
        ]),
        ep(2, code, _trial("p1", "Action: [BEGIN]def f(): return 2[END]", "def f(): return 2", False,
                           "Test failed: assert f() == 1"), [
            ("The function returns the wrong constant; read the tests before writing code.",
             _trial("p2", "Action: [BEGIN]def f(): return 3[END]", "def f(): return 3", False, "Test failed: x")),
        ]),
        ep(3, easy, _trial("p1", "Thought: easy.\nAction: Finish[4]", "4", True), []),
    ]


EPISODE_FIELDS = (("item_id",), ("task",), ("item", "question"), ("item", "answer"), ("item", "choices"),
                  ("item", "tests"), ("trial1", "prompt"), ("trial1", "completion"), ("trial1", "extracted"),
                  ("trial1", "correct"), ("trial1", "error"), ("trial1", "score"), ("model", "source"))
SAMPLE_FIELDS = (("sample_idx",), ("reflection", "text"), ("reflection", "prompt"), ("trial2", "prompt"),
                 ("trial2", "completion"), ("trial2", "extracted"), ("trial2", "correct"), ("trial2", "error"))


def pick(obj: dict, path: tuple[str, ...]) -> Any:
    for key in path:
        obj = obj[key]
    return obj


def test_our_episodes_to_reflectevo_and_back(tmp_path: Path) -> None:
    eps = synthetic_episodes()
    write_jsonl(tmp_path / "episodes.jsonl", eps)
    conversion.convert(tmp_path / "episodes.jsonl", tmp_path / "theirs.jsonl", "raw", "to")
    theirs = read_jsonl(tmp_path / "theirs.jsonl")
    mc, code, easy = theirs
    assert list(mc) == ["question", "answer", "id", "output", raw_format.PRE_GENERATION_MARK]
    assert mc["answer"] == "b"  # lowercase gold
    assert mc["output"][0]["reason_prompt"] == "p1" and mc["output"][1]["reflection_prompt"] == "reflect on mc-1"
    assert mc["id"] == "mc-1" and [o["trail"] for o in mc["output"]] == [1, 2, 2]
    assert mc["output"][0]["scratchpad"].endswith("Finish[A]\nObservation: Answer is INCORRECT")
    assert mc["output"][0]["reflections"] == [] and len(mc["output"][1]["reflections"]) == 1
    assert mc["output"][1]["is_correct"] is True and mc["output"][0]["reasoning_source"] == "hub:org/tiny"
    assert code["test_list"] == ["assert f() == 1"]
    assert code["output"][0]["scratchpad"].endswith("Observation: Test failed: assert f() == 1\nAnswer is INCORRECT")
    assert len(easy["output"]) == 1 and easy["output"][0]["is_correct"] is True
    assert "demand_id" not in json.dumps(theirs)  # no counterpart: left out

    # back: task names are not in their format, so give each group its own
    for name, idx in (("demo/mc", [0, 2]), ("demo/code", [1])):
        part = tmp_path / f"{name.replace('/', '_')}.jsonl"
        write_jsonl(part, [theirs[i] for i in idx])
        back = list(conversion.import_records(part, "raw", task=name))
        for b, i in zip(back, idx):
            for f in EPISODE_FIELDS:
                assert pick(b, f) == pick(eps[i], f), f
            assert len(b["samples"]) == len(eps[i]["samples"])
            for sb, so in zip(b["samples"], eps[i]["samples"]):
                for f in SAMPLE_FIELDS:
                    assert pick(sb, f) == pick(so, f), f


def test_run_py_prompts_go_to_meta(tmp_path: Path) -> None:
    """Their run.py prompts are rebuilt after generation: unmarked records never fill our prompts."""
    write_jsonl(tmp_path / "e.jsonl", synthetic_episodes()[:1])
    conversion.convert(tmp_path / "e.jsonl", tmp_path / "t.jsonl", "raw", "to")
    rec = read_jsonl(tmp_path / "t.jsonl")[0]
    del rec[raw_format.PRE_GENERATION_MARK]
    write_jsonl(tmp_path / "t.jsonl", [rec])
    ep = next(conversion.import_records(tmp_path / "t.jsonl", "raw"))
    assert ep["trial1"]["prompt"] is None and ep["samples"][0]["reflection"]["prompt"] is None
    outs = ep["meta"]["reflectevo"]["outputs"]
    assert outs[0]["reason_prompt"] == "p1" and outs[1]["reflection_prompt"] == "reflect on mc-1"
    assert "(BEGIN)" in outs[0]["prompt_note"]


ROW_FIELDS = ("id", "task", "question", "choices", "answer", "trial1_prompt", "trial1", "trial1_answer")
SIDE_FIELDS = ("reflection", "reflection_prompt", "trial2", "trial2_answer", "trial2_correct")


def _judge(comparisons):
    return [{"winner": 0, "votes": [0, 0]} for _ in comparisons]


def test_our_curated_rows_to_reflectevo_and_back(tmp_path: Path) -> None:
    eps = synthetic_episodes()
    # a second fixing reflection on the MC item so there is a Dpref pair
    eps[0]["samples"].append({**eps[0]["samples"][0], "sample_id": "ep1-2", "sample_idx": 2,
                              "reflection": {**eps[0]["samples"][0]["reflection"],
                                             "text": "Fruits carry seeds; apples do, carrots and stones do not."}})
    out = curate(eps, CurateConfig(eval_fraction=0.0), judge=_judge, judge_info={"preset": "demo-judge"})
    rows = {"dplus": out["dplus"]["train"], "dpm": out["dpm"]["train"], "dpref": out["dpref"]["train"]}
    assert [len(v) for v in rows.values()] == [2, 2, 1]
    for kind, ours in rows.items():
        write_jsonl(tmp_path / f"{kind}.jsonl", ours)
        conversion.convert(tmp_path / f"{kind}.jsonl", tmp_path / f"{kind}_theirs.jsonl", kind, "to")
        theirs = read_jsonl(tmp_path / f"{kind}_theirs.jsonl")
        assert all(t["answer"] == "b" and t["first_trial_reasoning"].endswith("Answer is INCORRECT") for t in theirs)
        back = list(conversion.import_records(tmp_path / f"{kind}_theirs.jsonl", kind, task="demo/mc"))
        for o, b, t in zip(ours, back, theirs):
            for f in ROW_FIELDS:
                assert b[f] == o[f], (kind, f)
            if kind == "dplus":
                assert set(t) == {"id", "question", "answer", "first_trial_reasoning", "first_trial_answer",
                                  "second_trial_reasoning", "second_trial_answer", "reflections", "reason_prompt",
                                  "reflect_prompt"}
                assert t["reason_prompt"] == [o["trial1_prompt"], o["trial2_prompt"]]
                for f in SIDE_FIELDS:
                    assert b[f] == o[f], (kind, f)
                assert b["trial2_prompt"] is None  # reason_prompt[1] always lands in meta on import
                assert b["meta"]["reflectevo"]["reason_prompt"][1] == o["trial2_prompt"]
            else:
                assert "judge" not in t and t["reflection_prompt"] == o["chosen"]["reflection_prompt"]
                for side in ("chosen", "rejected"):
                    for f in SIDE_FIELDS:
                        assert b[side][f] == o[side][f], (kind, side, f)
                assert (b.get("judge", "absent") is None) == (kind == "dpref")


# --------------------------------------------------------------------------------------------------
# CLI


@pytest.mark.parametrize("kind", list(FILES))
def test_cli_convert_both_ways(kind: str, examples: Path, tmp_path: Path) -> None:
    ours, theirs = tmp_path / "ours.jsonl", tmp_path / "theirs.jsonl"
    r = runner.invoke(app, ["convert", "--from", "reflectevo", "--kind", kind, str(examples / FILES[kind]), str(ours),
                            "--task", "logiqa"])
    assert r.exit_code == 0, err(r)
    n = 10 if kind == "raw" else 5
    assert len(read_jsonl(ours)) == n and f"{n} {kind} records" in err(r)
    assert read_jsonl(ours)[0]["task"] == "reflectevo/logiqa"
    r = runner.invoke(app, ["convert", "--to", "reflectevo", "--kind", kind, str(ours), str(theirs)])
    assert r.exit_code == 0, err(r)
    assert read_jsonl(theirs) == originals(examples / FILES[kind])


def test_task_from_their_file_name(tmp_path: Path) -> None:
    assert fields.task_name(None, "data_x/mbpp_COT-generated_0_1_1_True.jsonl") == "reflectevo/mbpp"
    assert fields.task_name(None, "bigbenchfree_COT-generated_0_test_.jsonl") == "reflectevo/bigbenchfree"
    assert fields.task_name(None, "example_D+.jsonl") == fields.UNKNOWN_TASK
    assert fields.task_name("rg/chain_sum") == "rg/chain_sum"


@pytest.mark.parametrize("flags", [[], ["--from", "reflectevo", "--to", "reflectevo"]])
def test_cli_needs_exactly_one_direction(flags: list[str], tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("{}\n")
    r = runner.invoke(app, ["convert", *flags, "--kind", "dplus", str(src), str(tmp_path / "out.jsonl")])
    assert r.exit_code == 2
    assert "exactly one of --from reflectevo" in err(r) and len(err(r).strip().splitlines()) == 1
    assert not (tmp_path / "out.jsonl").exists()


def test_cli_unknown_kind_and_format(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("{}\n")
    r = runner.invoke(app, ["convert", "--from", "reflectevo", "--kind", "dplsu", str(src), str(tmp_path / "o")])
    assert r.exit_code == 2 and "unknown kind 'dplsu'" in err(r) and "Did you mean 'dplus'" in err(r)
    r = runner.invoke(app, ["convert", "--to", "openai", "--kind", "dplus", str(src), str(tmp_path / "o")])
    assert r.exit_code == 2 and "unknown format 'openai'" in err(r)


def test_malformed_jsonl_line_names_file_and_line(examples: Path, tmp_path: Path) -> None:
    lines = (examples / FILES["dplus"]).read_text(encoding="utf-8").splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([lines[0], lines[1], '{"id": 3, "question": "q",,}', lines[3]]) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    out.write_text("previous content\n")
    r = runner.invoke(app, ["convert", "--from", "reflectevo", "--kind", "dplus", str(bad), str(out)])
    assert r.exit_code == 2
    assert f"{bad}:3: malformed JSON" in err(r) and len(err(r).strip().splitlines()) == 1
    assert out.read_text() == "previous content\n"  # nothing half-written
    assert not list(tmp_path.glob(".out.jsonl.*"))


def test_broken_object_in_pretty_printed_raw_file(examples: Path, tmp_path: Path) -> None:
    text = (examples / FILES["raw"]).read_text(encoding="utf-8")
    # the 4th object starts on line 121; break a value inside it
    start = [m for m, _ in jsonstream.iter_json_objects(examples / FILES["raw"])]
    assert start[:4] == [1, 41, 81, 121]
    lines = text.split("\n")
    at = next(i for i in range(120, len(lines)) if '"is_correct": false' in lines[i])  # 0-based
    lines[at] = lines[at].replace('"is_correct": false', '"is_correct": flase')
    bad = tmp_path / "raw.json"
    bad.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(ReflectEvoError) as e:
        list(conversion.import_records(bad, "raw"))
    msg = str(e.value)
    offset = len("\n".join(text.split("\n")[:120]).encode("utf-8")) + 1
    assert msg.startswith(f"{bad}:121: malformed JSON in the object starting at byte offset {offset}")
    assert f"line {at + 1}," in msg


def test_missing_fields_are_named(examples: Path, tmp_path: Path) -> None:
    rows = originals(examples / FILES["dpm"])
    del rows[1]["reflection_rejected"]
    bad = tmp_path / "dpm.jsonl"
    write_jsonl(bad, rows)
    r = runner.invoke(app, ["convert", "--from", "reflectevo", "--kind", "dpm", str(bad), str(tmp_path / "o.jsonl")])
    assert r.exit_code == 2 and f"{bad}:2: missing field 'reflection_rejected'" in err(r)
    assert not (tmp_path / "o.jsonl").exists()

    raw = originals(examples / FILES["raw"])[:2]
    del raw[1]["output"][1]["is_correct"]
    write_jsonl(bad, raw)
    with pytest.raises(ReflectEvoError, match=r"dpm.jsonl:2: output\[1\]: missing field 'is_correct'"):
        list(conversion.import_records(bad, "raw"))
    del raw[0]["output"][0]["reasoning"]
    write_jsonl(bad, raw)
    with pytest.raises(ReflectEvoError, match=r":1: output\[0\]: missing field 'scratchpad' \(or 'reasoning'\)"):
        list(conversion.import_records(bad, "raw"))

    ours = synthetic_episodes()
    del ours[2]["trial1"]
    write_jsonl(bad, ours)
    r = runner.invoke(app, ["convert", "--to", "reflectevo", "--kind", "raw", str(bad), str(tmp_path / "o.jsonl")])
    assert r.exit_code == 2 and f"{bad}:3: missing field 'trial1'" in err(r)


def test_trial_order_is_checked(examples: Path, tmp_path: Path) -> None:
    raw = originals(examples / FILES["raw"])[:1]
    raw[0]["output"][0]["trial"] = 2
    write_jsonl(tmp_path / "r.jsonl", raw)
    with pytest.raises(ReflectEvoError, match=r"output\[0\]: trail=2, expected 1"):
        list(conversion.import_records(tmp_path / "r.jsonl", "raw"))
