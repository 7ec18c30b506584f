"""Local stand-ins for the Hugging Face datasets the task loaders read, each in its hub repository's own
schema: the same configs, splits, columns, column types and id fields, Parquet files under the repository's
layout, and a README whose `configs:` metadata tells `datasets` which files make which config and split (as
the hub's cards do). The rows are synthetic (deterministic filler text of a chosen length, a gold answer the
task's verifier accepts), so nothing here is benchmark data.

`write_snapshot(root, dataset, sizes)` writes `<root>/<owner>/<name>/`, which the loaders read through
`datasets.load_dataset` when `$REFLECTEVO_HUB_DIR` (or the task option `hub_dir`) is `root`
(reflectevo/tasks/reflectevo_tasks.py: hub_snapshot). Used by tests/test_hub_loaders.py (a few rows per split)
and bench/paper_dryrun.py (the paper's item counts).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

WORDS = ("the", "a", "of", "river", "council", "report", "seven", "because", "market", "teacher", "green", "after",
         "north", "policy", "garden", "number", "before", "village", "engine", "theory", "silver", "every", "winter",
         "library", "signal", "orchard", "careful", "museum", "argument", "harbor", "ladder", "candle", "survey")


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(max(1, n)))


def sentences(rng: random.Random, n_words: int) -> str:
    out, left = [], n_words
    while left > 0:
        k = min(left, rng.randint(8, 18))
        out.append(words(rng, k).capitalize() + ".")
        left -= k
    return " ".join(out)


# --------------------------------------------------------------------------------------------------
# one row of each schema (index i of config `cfg`, split `split`)

def logiqa_row(rng: random.Random, i: int, cfg: str | None, split: str, q_words: int = 140) -> dict[str, Any]:
    return {"context": sentences(rng, q_words - 30), "query": f"Which one of the following, if true, explains case {split} {i}?",
            "options": [sentences(rng, 6) + f" ({split} {i} option {k})" for k in range(4)],
            "correct_option": rng.randrange(4)}


MATH_SIZES = {"algebra": 1744, "counting_and_probability": 771, "geometry": 870, "intermediate_algebra": 1295,
              "number_theory": 869, "prealgebra": 1205, "precalculus": 746}   # the 7,500 train problems


def math_row(rng: random.Random, i: int, cfg: str | None, split: str, q_words: int = 77) -> dict[str, Any]:
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    return {"problem": f"{sentences(rng, q_words - 12)} What is ${a} \\times {b}$ (problem {cfg} {split} {i})?",
            "level": f"Level {rng.randint(1, 5)}", "type": (cfg or "algebra").replace("_", " ").title(),
            "solution": f"{sentences(rng, 40)} So the product is $\\boxed{{{a * b}}}$."}


def mbpp_row(rng: random.Random, i: int, cfg: str | None, split: str, q_words: int = 20) -> dict[str, Any]:
    base = {"train": 601, "test": 11, "validation": 511, "prompt": 1}[split]
    tid = base + i
    fn = f"add_{tid}"
    return {"task_id": tid, "text": f"Write a function {fn} that adds {tid} to a number. {sentences(rng, q_words - 9)}",
            "code": f"def {fn}(x):\n    return x + {tid}",
            "test_list": [f"assert {fn}({k}) == {k + tid}" for k in (1, 2, 3)],
            "test_setup_code": "", "challenge_test_list": []}


def bigbench_row(rng: random.Random, i: int, cfg: str | None, split: str, q_words: int = 60) -> dict[str, Any]:
    n = rng.choice((2, 3, 4))
    opts = [f"{words(rng, 3)} {k}" for k in range(n)]
    gold = rng.randrange(n)
    body = sentences(rng, q_words)
    inputs = f"Q: {body} (item {cfg} {split} {i})\n" + "".join(f"  choice: {o}\n" for o in opts) + "A:"
    return {"inputs": inputs, "targets": [opts[gold]], "multiple_choice_targets": opts,
            "multiple_choice_scores": [int(k == gold) for k in range(n)], "idx": i}


def coqa_row(rng: random.Random, i: int, cfg: str | None, split: str, q_words: int = 300) -> dict[str, Any]:
    story = sentences(rng, q_words) + f" Story {split} {i}."
    turns = rng.randint(8, 15)
    answers = [words(rng, rng.randint(1, 4)) for _ in range(turns)]
    starts = [rng.randrange(len(story) // 2) for _ in range(turns)]
    return {"source": rng.choice(("wikipedia", "cnn", "gutenberg", "race", "mctest")), "story": story,
            "questions": [f"What happened {t}?" for t in range(turns)],
            "answers": {"input_text": answers, "answer_start": starts, "answer_end": [s + 20 for s in starts]}}


def squadshifts_row(rng: random.Random, i: int, cfg: str | None, split: str, q_words: int = 140) -> dict[str, Any]:
    context = sentences(rng, q_words)
    answer = words(rng, rng.randint(1, 3))
    return {"id": f"{rng.getrandbits(96):024x}", "title": f"{cfg} {i}", "context": context,
            "question": f"Which {words(rng, 3)} ({cfg} {i})?",
            "answers": {"text": [answer, answer], "answer_start": [3, 3]}}


# --------------------------------------------------------------------------------------------------
# repository layouts


def _arrow_schema(dataset: str):
    import pyarrow as pa

    s, i32, i64, ls = pa.string(), pa.int32(), pa.int64(), pa.list_(pa.string())
    return {
        "lucasmccabe/logiqa": pa.schema([("context", s), ("query", s), ("options", ls), ("correct_option", i64)]),
        "EleutherAI/hendrycks_math": pa.schema([("problem", s), ("level", s), ("type", s), ("solution", s)]),
        "google-research-datasets/mbpp": pa.schema([("task_id", i32), ("text", s), ("code", s), ("test_list", ls),
                                                    ("test_setup_code", s), ("challenge_test_list", ls)]),
        "tasksource/bigbench": pa.schema([("inputs", s), ("targets", ls), ("multiple_choice_targets", ls),
                                          ("multiple_choice_scores", pa.list_(i32)), ("idx", i32)]),
        "stanfordnlp/coqa": pa.schema([("source", s), ("story", s), ("questions", ls),
                                       ("answers", pa.struct([("input_text", ls), ("answer_start", pa.list_(i32)),
                                                              ("answer_end", pa.list_(i32))]))]),
        "ludwigschmidt/squadshifts": pa.schema([("id", s), ("title", s), ("context", s), ("question", s),
                                                ("answers", pa.struct([("text", ls), ("answer_start", pa.list_(i32))]))]),
    }[dataset]


# dataset -> (row maker, its configs and splits, the file path of a (config, split) inside the repository)
LAYOUTS: dict[str, tuple[Callable[..., dict[str, Any]], dict[str, tuple[str, ...]], Callable[[str, str], str]]] = {
    # the parquet conversion branch (refs/convert/parquet) of a loading-script dataset: <config>/<split>/0000.parquet
    "lucasmccabe/logiqa": (logiqa_row, {"default": ("train", "validation", "test")},
                           lambda c, s: f"{c}/{s}/0000.parquet"),
    "EleutherAI/hendrycks_math": (math_row, {c: ("train", "test") for c in MATH_SIZES},
                                  lambda c, s: f"{c}/{s}-00000-of-00001.parquet"),
    "google-research-datasets/mbpp": (mbpp_row, {"full": ("train", "test", "validation", "prompt")},
                                      lambda c, s: f"{c}/{s}-00000-of-00001.parquet"),
    "tasksource/bigbench": (bigbench_row, {}, lambda c, s: f"{c}/{s}-00000-of-00001.parquet"),   # configs: the tasks
    "stanfordnlp/coqa": (coqa_row, {"default": ("train", "validation")}, lambda c, s: f"data/{s}-00000-of-00001.parquet"),
    "ludwigschmidt/squadshifts": (squadshifts_row, {c: ("test",) for c in ("new_wiki", "nyt", "reddit", "amazon")},
                                  lambda c, s: f"{c}/test-00000-of-00001.parquet"),
}


def write_snapshot(root: Path, dataset: str, sizes: dict[tuple[str, str], int], seed: int = 0,
                   q_words: dict[str, int] | None = None, extra_rows: dict[tuple[str, str], list[dict]] | None = None) -> Path:
    """Write `<root>/<dataset>/` with `sizes[(config, split)]` rows per config and split (configs and splits
    must be the dataset's own: tasksource/bigbench takes any BIG-bench task name as config). `q_words`: words
    of question text per config (default: the row maker's); `extra_rows`: hand-written rows appended."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    maker, configs, path_of = LAYOUTS[dataset]
    repo = root / dataset
    repo.mkdir(parents=True, exist_ok=True)
    schema = _arrow_schema(dataset)
    card: dict[str, list[dict[str, str]]] = {}
    for (cfg, split), n in sizes.items():
        if configs and (cfg not in configs or split not in configs[cfg]):
            raise ValueError(f"{dataset} has no config {cfg!r} split {split!r} (it has {configs})")
        rng = random.Random(f"{seed}:{dataset}:{cfg}:{split}")
        kw = {"q_words": q_words[cfg]} if q_words and cfg in q_words else {}
        rows = [maker(rng, i, cfg, split, **kw) for i in range(n)] + list((extra_rows or {}).get((cfg, split), []))
        target = repo / path_of(cfg, split)
        target.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), target)
        card.setdefault(cfg, []).append({"split": split, "path": path_of(cfg, split)})
    lines = ["---", "configs:"]
    for cfg, files in card.items():
        lines += [f"- config_name: {cfg}", "  data_files:"]
        lines += [f"  - split: {f['split']}\n    path: {f['path']}" for f in files]
    lines += ["---", "", f"Synthetic rows in the schema of the Hugging Face dataset {dataset} (tests, dry runs).", ""]
    (repo / "README.md").write_text("\n".join(lines))
    return repo
