"""Worked few-shot examples as data: one YAML file per task in `reflectevo/resources/fewshot/`.

    task: rg/chain_sum
    note: where the examples come from (never an item of any split)
    examples:
      - question: "State the final answer to the following arithmetic problem: 3 + 5 - 2 ="
        thought: "3 + 5 = 8. 8 - 2 = 6."
        answer: "6"

Each example becomes one earlier chat turn: the question, then `Thought: <thought>` and
`Action: Finish[<answer>]`. The thought must compute the answer: a small model copies the form of its
examples, so an example without reasoning teaches it not to reason. Items whose question equals an
example's are dropped from the task's splits, so no item ever sees its own answer.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

from reflectevo.errors import ReflectEvoError


def resource_name(task: str) -> str:
    """`rg/chain_sum` -> `rg__chain_sum.yaml`."""
    return task.replace("/", "__") + ".yaml"


def builtin_file(task: str) -> Path | None:
    p = resources.files("reflectevo.resources").joinpath("fewshot").joinpath(resource_name(task))
    return Path(str(p)) if p.is_file() else None


@functools.lru_cache(maxsize=64)
def load_fewshot(path: str, task: str) -> tuple[tuple[str, str, str], ...]:
    """(question, thought, answer) of every example in a few-shot file; one clear error for a bad file."""
    from ruamel.yaml import YAML

    p = Path(path)
    try:
        data = YAML(typ="safe", pure=True).load(p.read_text())
    except FileNotFoundError:
        raise ReflectEvoError(f"task {task}: fewshot file {p} not found") from None
    except Exception as e:
        raise ReflectEvoError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    examples = (data or {}).get("examples") if isinstance(data, dict) else None
    if not examples:
        raise ReflectEvoError(f"{p}: task {task}: key 'examples' is empty or missing (list at least one worked example)")
    out = []
    for n, ex in enumerate(examples):
        where = f"{p}: task {task}: examples[{n}]"
        if not isinstance(ex, dict):
            raise ReflectEvoError(f"{where}: expected a mapping with question, thought, answer")
        for key in ("question", "thought", "answer"):
            if not str(ex.get(key, "")).strip():
                raise ReflectEvoError(f"{where}.{key}: missing or empty")
        out.append((str(ex["question"]).strip(), str(ex["thought"]).strip(), str(ex["answer"]).strip()))
    return tuple(out)
