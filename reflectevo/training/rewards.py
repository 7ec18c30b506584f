"""Reward functions for online RL, in TRL's reward-function form `f(prompts, completions, **columns) -> [float]`.

- `correct`: the task's own verifier on the extracted answer (1.0 right, 0.0 wrong or no parsable answer).
  Code answers run in the sandbox (`reflectevo.sandbox`, through `Task.verify_many`: never in this process,
  one child per core, time/memory/file limits), so hostile code scores 0 and touches nothing here.
- `format`: the output has the expected shape: one-stage outputs "Answer:" followed by a parsable answer;
  a reflect-retry reflection is non-empty and gives no answer itself (the retry does).

What is judged per setting kind: `one_stage` (grpo_one_stage, rloo) judges the answer part of the output
(after "Answer:", as evaluation does); `reflect_retry` judges the retry, which the rollout passes as the
`retry` column. Items travel as the JSON column `item` (`Item.to_dict`). Weights: `train.rl.reward_weights`
(only rewards with weight > 0 are computed).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from reflectevo.prompts import split_one_stage
from reflectevo.protocol.rounds import judge as protocol_judge
from reflectevo.tasks import Item, Task
from reflectevo.tasks.registry import TaskCache

KINDS = ("one_stage", "reflect_retry")


def completion_text(completion: Any) -> str:
    """A TRL completion as text: a string, or the content of the last message of a conversational one."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content") or "")
    return str(completion)


def _items(raw: Sequence[Any]) -> list[Item]:
    return [Item.from_dict(json.loads(x) if isinstance(x, str) else x) for x in raw]


def judge(texts: Sequence[str], items: Sequence[Item], tasks: dict[str, Task] | TaskCache | None = None) -> list[bool]:
    """Verdicts of `texts` against `items` (`reflectevo.protocol.rounds.judge`: one batched `verify_many` per task,
    code in parallel sandboxes); each item's task is built with its own task options (`TaskCache`)."""
    cache = tasks if isinstance(tasks, TaskCache) else TaskCache(tasks)
    return [bool(v.correct) for v in protocol_judge(texts, items, [cache.of(it) for it in items])]


def judged_text(kind: str, completion: Any, retry: str | None = None) -> str:
    """The text the verifier reads: the one-stage answer part (the whole output without "Answer:"), or the retry."""
    if kind == "reflect_retry":
        return retry or ""
    text = completion_text(completion)
    _, answer = split_one_stage(text)
    return answer or text


def correct_reward(kind: str, tasks: dict[str, Task] | None = None) -> Callable[..., list[float]]:
    if kind not in KINDS:
        raise ValueError(f"unknown reward kind {kind!r}")

    def correct(prompts=None, completions=(), item=(), retry=None, retry_correct=None, **_: Any) -> list[float]:
        if kind == "reflect_retry" and retry_correct is not None:   # the rollout's own verdicts on its retries
            return [1.0 if ok else 0.0 for ok in retry_correct]
        retries = retry if retry is not None else [None] * len(completions)
        texts = [judged_text(kind, c, r) for c, r in zip(completions, retries)]
        return [1.0 if ok else 0.0 for ok in judge(texts, _items(item), tasks)]

    return correct


def format_reward(kind: str, tasks: dict[str, Task] | None = None) -> Callable[..., list[float]]:
    if kind not in KINDS:
        raise ValueError(f"unknown reward kind {kind!r}")
    cache = TaskCache(tasks)

    def format(prompts=None, completions=(), item=(), **_: Any) -> list[float]:  # TRL logs rewards by function name
        out = []
        for c, it in zip(completions, _items(item)):
            text = completion_text(c)
            task = cache.of(it)
            if kind == "one_stage":
                reflection, answer = split_one_stage(text)
                ok = bool(reflection) and bool(answer) and task.extract(answer) is not None
            else:
                ok = bool(text.strip()) and task.extract(text) is None
            out.append(1.0 if ok else 0.0)
        return out

    return format


FACTORIES = {"correct": correct_reward, "format": format_reward}


def reward_functions(kind: str, weights: dict[str, float],
                     tasks: dict[str, Task] | None = None) -> tuple[list[Callable[..., list[float]]], list[float]]:
    """(reward functions, their weights) for TRL's `reward_funcs` / `reward_weights`: those weighted > 0, in the
    order of `FACTORIES`."""
    names = [n for n in FACTORIES if weights.get(n, 0.0) > 0]
    return [FACTORIES[n](kind, tasks) for n in names], [float(weights[n]) for n in names]
