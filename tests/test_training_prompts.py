"""Training builds the prompts evaluation builds: with the task options an item was prepared with.

A multiple-choice task (`choices: N`) renders its options, letter-answer worked examples and the "letter of
the correct option" instruction; before, training rebuilt every task from its name alone, so the one-stage,
corrector, SFT-on-answers and RL prompts showed free-text examples and a "<answer>" instruction while the
targets and evaluation used letters."""

from __future__ import annotations

import json

import pytest

from reflectevo.curation.rows import _common
from reflectevo.prompts import one_stage_messages, reflection_messages, trial_messages
from reflectevo.tasks import Item
from reflectevo.tasks.registry import TaskCache, get_task
from reflectevo.training.data import examples, rl_rows
from reflectevo.training.rewards import judge

OPTIONS = {"choices": 4}
LETTER_RULE = "letter of the correct option"


@pytest.fixture(scope="module")
def mc():
    task = get_task("rg/family_relationships", OPTIONS)
    item = task.load("train", 1, 0)[0]
    # as the prepare stage writes it: the options in the item's meta
    return task, Item.from_dict({**item.to_dict(), "meta": {**item.meta, "task_options": dict(OPTIONS)}})


def _episode(item: Item) -> dict:
    wrong = next(chr(65 + i) for i in range(4) if chr(65 + i) != item.answer)
    t1 = {"prompt": "p", "completion": "c", "attempt": f"Thought: guess. That is option {wrong}.\nAction: Finish[{wrong}]",
          "extracted": wrong, "correct": False}
    return {"episode_id": "ep0", "item_id": item.id, "task": item.task, "item": item.to_dict(), "trial1": t1,
            "model": {"preset": "x"}, "gen": {"use_previous_trial": True, "name_rejected": True}, "prompt_version": "v"}


def _dplus_row(item: Item) -> dict:
    ep = _episode(item)
    return {**_common(ep), "reflection": "Check each option.",
            "trial2": f"Thought: again. That is option {item.answer}.\nAction: Finish[{item.answer}]"}


def _text(messages) -> str:
    return "\n".join(m["content"] for m in messages)


def test_curated_rows_carry_the_task_options(mc):
    _, item = mc
    assert _common(_episode(item))["task_options"] == OPTIONS


def test_sft_prompts_are_the_evaluation_prompts(mc):
    task, item = mc
    row = _dplus_row(item)
    one = examples("one_stage", [row])["one_stage"][0]["prompt"]
    assert one == one_stage_messages(task, item, row["trial1"]) and LETTER_RULE in _text(one)
    corrector = examples("two_stage", [row])["corrector"][0]["prompt"]
    assert corrector == trial_messages(task, item, reflection=row["reflection"], previous=row["trial1"], retry=True,
                                       rejected=row["retry_rejected"])
    assert LETTER_RULE in _text(corrector) and "That is option" in _text(corrector)   # the worked examples too
    qa = examples("sft_qa", [item.to_dict()])["answerer"][0]["prompt"]
    assert qa == trial_messages(task, item) and LETTER_RULE in _text(qa)


def test_rl_prompts_and_rewards_use_the_item_task_options(mc):
    task, item = mc
    rows = rl_rows({"ep0": _episode(item)}, "oracle")
    one = examples("grpo_one_stage", rows)["one_stage"][0]
    assert one["prompt"] == one_stage_messages(task, item, rows[0]["trial1"], oracle=True)
    assert LETTER_RULE in _text(one["prompt"])
    assert examples("grpo_reflect_retry", rows)["reflector"][0]["prompt"] == reflection_messages(item, rows[0]["trial1"],
                                                                                                  None, oracle=True)
    carried = Item.from_dict(json.loads(one["item"]))
    assert TaskCache().of(carried).n_choices == 4
    assert judge([f"Action: Finish[{item.answer}]", "Action: Finish[nonsense]"], [carried, carried]) == [True, False]
