"""Every hub loader, read through `datasets.load_dataset` from a local snapshot in the hub repository's own
schema (tests/hub_fixtures.py): configs, splits, columns, id fields, answers, the pinned revision table, and the
one-line error when a hub dataset cannot be reached offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hub_fixtures import write_snapshot

from reflectevo.errors import ReflectEvoError
from reflectevo.tasks.registry import get_task, task_group
from reflectevo.tasks.reflectevo_tasks import HUB_REVISIONS, HubSource

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty snapshot folder; no network (offline), a private `datasets` cache, no local data folder."""
    root = tmp_path / "hub"
    root.mkdir()
    for var, value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("REFLECTEVO_HUB_DIR", str(root)),
                       ("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets")), ("HF_HOME", str(tmp_path / "hf"))):
        monkeypatch.setenv(var, value)
    monkeypatch.setenv("REFLECTEVO_DATA", str(tmp_path / "no-data"))   # no local copies: the snapshot is read
    return root


def bigbench_test_set(folder: Path, leaked: str) -> Path:
    """A ReflectEvo BIG-bench test file (its data_source format) holding one line that a hub row shares."""
    src = folder / "reflectevo" / "data_source"
    src.mkdir(parents=True)
    rows = [{"id": 1, "question": f"Passage: {leaked}\nOptions:\nA. True\nB. False", "answer": "a"},
            {"question": f"{leaked}\n\nQuestion: who?", "answer": "someone"}]
    (src / "bigbench_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_logiqa_train_and_upstream_test(hub: Path) -> None:
    write_snapshot(hub, "lucasmccabe/logiqa", {("default", "train"): 5, ("default", "test"): 3})
    items = get_task("logiqa").load("train")
    assert [it.id for it in items] == [f"logiqa-en-train-{i}" for i in range(1, 6)]
    it = items[0]
    assert it.choices and len(it.choices) == 4 and it.answer in "ABCD"
    assert it.question.endswith("case train 0?") and "\n" in it.question
    assert get_task("logiqa").verify(f"Action: Finish[{it.answer}]", it).correct
    assert len(get_task("logiqa").load("upstream_test")) == 3


def test_math_reads_every_subject_config(hub: Path) -> None:
    from hub_fixtures import MATH_SIZES

    write_snapshot(hub, "EleutherAI/hendrycks_math", {(c, "train"): 2 for c in MATH_SIZES})
    items = get_task("math").load("train")
    assert len(items) == 14
    assert {it.id.rsplit("-", 1)[0] for it in items} == {f"math-train-{c}" for c in MATH_SIZES}
    assert all(it.answer.isdigit() and it.meta["level"].startswith("Level ") for it in items)
    task = get_task("math")
    assert task.verify(task.gold_completion(items[3]), items[3]).correct


def test_mbpp_full_config_ids_and_tests(hub: Path) -> None:
    write_snapshot(hub, "google-research-datasets/mbpp", {("full", "train"): 3, ("full", "test"): 2})
    items = get_task("mbpp").load("train")
    assert [it.id for it in items] == ["mbpp-601", "mbpp-602", "mbpp-603"]
    it = items[0]
    assert it.question.startswith("You are an expert Python programmer") and "assert add_601(1) == 602" in it.question
    assert get_task("mbpp").verify(get_task("mbpp").gold_completion(it), it).correct


@pytest.mark.parametrize("subtask", ["strategyqa", "vitaminc_fact_verification", "causal_judgment", "winowhy"])
def test_bigbench_subtask_configs_and_splits(hub: Path, tmp_path: Path, subtask: str) -> None:
    leaked = "The council moved the river report north after seven careful winters of survey work"
    extra = {"inputs": f"Q: {leaked}\n  choice: yes\n  choice: no\nA:", "targets": ["yes"],
             "multiple_choice_targets": ["yes", "no"], "multiple_choice_scores": [1, 0], "idx": 99}
    write_snapshot(hub, "tasksource/bigbench", {(subtask, "train"): 4, (subtask, "validation"): 2},
                   extra_rows={(subtask, "train"): [extra]})
    data = bigbench_test_set(tmp_path / "data", leaked)
    task = get_task(f"bigbench/{subtask}", {"data_dir": str(data)})
    train = task.load("train")
    assert [it.id for it in train] == [f"bigbench-{subtask}-train-{i}" for i in range(4)]   # idx 99 leaked: dropped
    assert all(it.choices and it.answer in "ABCD"[:len(it.choices)] for it in train)
    assert all(task.verify(f"Finish[{it.answer}]", it).correct for it in train)
    assert len(task.load("validation")) == 2


def test_coqa_every_turn_history_free(hub: Path, tmp_path: Path) -> None:
    write_snapshot(hub, "stanfordnlp/coqa", {("default", "train"): 3})
    task = get_task("bigbench/coqa", {"data_dir": str(bigbench_test_set(tmp_path / "data", "nothing shared here at all"))})
    items = task.load("train")
    import pyarrow.parquet as pq

    table = pq.read_table(hub / "stanfordnlp/coqa/data/train-00000-of-00001.parquet").to_pylist()
    assert len(items) == sum(len(r["questions"]) for r in table)
    first = items[0]
    assert first.id == "coqa-train-0-0" and first.question == f"{table[0]['story']}\n\nQuestion: {table[0]['questions'][0]}"
    assert first.answer == table[0]["answers"]["input_text"][0]
    assert task.verify(f"Finish[{first.answer}]", first).correct


def test_squad_shifts_four_domains_and_leak_filter(hub: Path, tmp_path: Path) -> None:
    write_snapshot(hub, "ludwigschmidt/squadshifts", {(c, "test"): 2 for c in ("new_wiki", "nyt", "reddit", "amazon")})
    import pyarrow.parquet as pq

    nyt = pq.read_table(hub / "ludwigschmidt/squadshifts/nyt/test-00000-of-00001.parquet").to_pylist()
    data = bigbench_test_set(tmp_path / "data", nyt[0]["context"])   # one context is in the test set
    items = get_task("bigbench/squad_shifts", {"data_dir": str(data)}).load("train")
    assert len(items) == 7 and {it.meta["domain"] for it in items} == {"new_wiki", "nyt", "reddit", "amazon"}
    assert f"squadshifts-nyt-{nyt[0]['id']}" not in {it.id for it in items}
    assert all(it.answer == it.meta["all_answers"][0] for it in items)


def test_every_hub_dataset_has_a_revision_entry() -> None:
    """Each dataset a loader reads is in HUB_REVISIONS (a commit, or None: no commit known, read from a branch)."""
    from reflectevo.tasks.reflectevo_tasks import SourcedTask

    used: set[str] = set()
    for name in {*task_group("reflectevo-train"), *task_group("reflectevo-test")}:
        task = get_task(name)
        assert isinstance(task, SourcedTask)
        used |= {s.hub.dataset for s in task.split_sources.values() if s.hub is not None}
    assert used <= set(HUB_REVISIONS), used - set(HUB_REVISIONS)
    for dataset in used:
        src = HubSource(dataset, "train")
        assert src.pinned == (HUB_REVISIONS[dataset] is not None)
        assert src.resolved_revision and (src.pinned or src.describe().endswith("[unpinned]"))


def test_unreachable_hub_dataset_is_one_line(hub: Path) -> None:
    """Offline, no snapshot, an empty cache: the error names dataset, revision, what was tried and the fix."""
    with pytest.raises(ReflectEvoError) as err:
        get_task("mbpp").load("train")
    msg = str(err.value)
    assert "\n" not in msg
    for part in ("hf:google-research-datasets/mbpp@4bb6404fdc6cacfda99d4ac4205087b89d32030c config full split train",
                 "$REFLECTEVO_HUB_DIR/google-research-datasets/mbpp absent", "Hugging Face cache",
                 "HF_HUB_OFFLINE/HF_DATASETS_OFFLINE set", "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1",
                 "hf download --repo-type dataset google-research-datasets/mbpp --revision 4bb6404"):
        assert part in msg, (part, msg)


def test_unreachable_dataset_from_the_cli_exits_2(hub: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "reflectevo.cli", "items", "bigbench/social_iqa", "--split", "train"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "hf:tasksource/bigbench@main config social_iqa split train" in lines[0], proc.stderr


def test_prepare_takes_train_only_and_test_only_tasks(hub: Path, tmp_path: Path) -> None:
    """The paper recipe's shape: BIG-bench training sources (no test split), ReflectEvo's BIG-bench test set (no train
    split), LogiQA with both; a train row that is a test item is dropped across tasks."""
    import random

    import yaml
    from hub_fixtures import bigbench_row

    leaked = "A teacher carried the silver candle to the library before every winter council meeting began"
    data = bigbench_test_set(tmp_path / "data", leaked)
    src = data / "reflectevo" / "data_source"
    (src / "logiqa_test.jsonl").write_text("".join(json.dumps(
        {"id": i, "question": f"Passage {i}.\nA. a\nB. b\nC. c\nD. d", "answer": "b"}) + "\n" for i in range(1, 4)))
    extra = dict(bigbench_row(random.Random(0), 50, "strategyqa", "train"), idx=50,
                 inputs=f"Q: {leaked}\n  choice: yes\n  choice: no\nA:")
    write_snapshot(hub, "lucasmccabe/logiqa", {("default", "train"): 4})
    write_snapshot(hub, "tasksource/bigbench", {("strategyqa", "train"): 3}, extra_rows={("strategyqa", "train"): [extra]})
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["prepare"]["tasks"] = [{"name": "logiqa", "n_train": 0, "n_test": 0, "options": {"data_dir": str(data)}},
                                  {"name": "bigbench/strategyqa", "n_train": 0, "options": {"data_dir": str(data)}},
                                  {"name": "bigbench", "n_test": 0, "options": {"data_dir": str(data)}}]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "stages/prepare.py"), "--params", str(tmp_path / "params.yaml"),
                           "--out", str(tmp_path / "sources")], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    counts = json.loads((tmp_path / "sources/card.json").read_text())["counts"]
    assert counts == {"logiqa": {"train": 4, "test": 3}, "bigbench/strategyqa": {"train": 3, "test": 0},
                      "bigbench": {"train": 0, "test": 1}}
    train = [json.loads(ln) for ln in (tmp_path / "sources/train.jsonl").read_text().splitlines()]
    assert not any(leaked.lower() in r["question"].lower() for r in train)


def test_describe_reports_an_unreadable_split_instead_of_raising(hub: Path) -> None:
    """`reflectevo tasks` / `reflectevo plan` describe every split; a snapshot without one split is said, not raised."""
    write_snapshot(hub, "lucasmccabe/logiqa", {("default", "train"): 2})
    info = get_task("logiqa").describe()
    assert info["sizes"]["train"] == 2 and info["source"]["train"].startswith("local snapshot")
    assert info["source"]["upstream_test"].startswith("unreadable: cannot load hf:lucasmccabe/logiqa")
    assert info["sizes"]["upstream_test"] == 651
