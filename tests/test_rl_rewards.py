"""RL reward functions on fixtures: right, wrong, no parsable answer, code through the sandbox, hostile code;
and the reward-weight / num_generations checks of `train.rl`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reflectevo.config.loader import from_dict
from reflectevo.training.config import RLHyper
from reflectevo.errors import ReflectEvoError
from reflectevo.tasks import Item
from reflectevo.training.rewards import correct_reward, format_reward, reward_functions

ITEM = Item(id="i1", task="rg/chain_sum", question="What is 2 + 1?", answer="3")
CODE_ITEM = Item(id="c1", task="mbpp", question="Write add(a, b).", answer="def add(a, b): return a + b",
                 tests=("assert add(1, 2) == 3", "assert add(-1, 1) == 0"))


def _col(*items: Item) -> list[str]:
    return [json.dumps(it.to_dict()) for it in items]


def _msg(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


ONE_STAGE = {
    "right": "I added wrongly. Plan: add again.\n\nAnswer:\nThought: 2 + 1 = 3.\nAction: Finish[3]",
    "wrong": "I should check.\n\nAnswer:\nThought: 2 + 1 = 4.\nAction: Finish[4]",
    "unparsable": "I do not know what to do here at all",
    "no_separator": "Thought: 2 + 1 = 3.\nAction: Finish[3]",
}


@pytest.mark.parametrize("case,correct,fmt", [("right", 1.0, 1.0), ("wrong", 0.0, 1.0), ("unparsable", 0.0, 0.0),
                                              ("no_separator", 1.0, 0.0)])
def test_one_stage_rewards(case, correct, fmt):
    # conversational completions (what TRL passes for chat prompts) and plain strings judge alike
    for completion in (_msg(ONE_STAGE[case]), ONE_STAGE[case]):
        assert correct_reward("one_stage")(completions=[completion], item=_col(ITEM)) == [correct]
        assert format_reward("one_stage")(completions=[completion], item=_col(ITEM)) == [fmt]


def test_reflect_retry_judges_the_retry_not_the_reflection():
    refl = [_msg("I added wrongly; add the numbers again."), _msg("The answer is Finish[3]")]
    retries = ["Thought: 2 + 1 = 3.\nAction: Finish[3]", "Thought: hmm.\nAction: Finish[5]"]
    assert correct_reward("reflect_retry")(completions=refl, item=_col(ITEM, ITEM), retry=retries) == [1.0, 0.0]
    # format: a reflection that answers itself (or is empty) is not a reflection
    assert format_reward("reflect_retry")(completions=refl + [_msg("  ")], item=_col(ITEM, ITEM, ITEM)) == [1.0, 0.0, 0.0]


def test_code_answers_run_in_the_sandbox():
    good = "Reflection.\n\nAnswer:\n[BEGIN]\ndef add(a, b):\n    return a + b\n[END]"
    bad = "Reflection.\n\nAnswer:\n[BEGIN]\ndef add(a, b):\n    return a - b\n[END]"
    none = "Reflection.\n\nAnswer:\nI would write a function."
    out = correct_reward("one_stage")(completions=[_msg(good), _msg(bad), _msg(none)], item=_col(*[CODE_ITEM] * 3))
    assert out == [1.0, 0.0, 0.0]


def test_hostile_code_scores_zero_and_leaves_the_host_alone(tmp_path: Path):
    canary = tmp_path / "keep.txt"
    canary.write_text("keep")
    hostile = {
        "loop": "while True:\n    pass",
        "delete": f"import os\nos.remove({str(canary)!r})\ndef add(a, b): return a + b",
        "exit_ok": "import os\nos._exit(0)",
        "forge_pass": "class Yes:\n    def __eq__(self, o): return True\ndef add(a, b): return Yes()",
    }
    completions = [_msg(f"R.\n\nAnswer:\n[BEGIN]\n{code}\n[END]") for code in hostile.values()]
    out = correct_reward("one_stage")(completions=completions, item=_col(*[CODE_ITEM] * len(completions)))
    assert out == [0.0] * len(hostile)
    assert canary.read_text() == "keep"


def test_reward_functions_follow_the_weights():
    funcs, weights = reward_functions("one_stage", {"correct": 1.0, "format": 0.0})
    assert [f.__name__ for f in funcs] == ["correct"] and weights == [1.0]
    funcs, weights = reward_functions("one_stage", {"correct": 2.0, "format": 0.5})
    assert [f.__name__ for f in funcs] == ["correct", "format"] and weights == [2.0, 0.5]


@pytest.mark.parametrize("data,message", [
    ({"num_generations": 1, "batch_size": 4}, "train.rl.num_generations: must be >= 2"),
    ({"reward_weights": {"correct": -1.0}}, "train.rl.reward_weights.correct: must be a number >= 0"),
    ({"reward_weights": {"correct": "lots"}}, "train.rl.reward_weights.correct: expected a number, got 'lots'"),
    ({"reward_weights": {"corect": 1.0}}, "unknown reward 'corect'. Did you mean 'correct'?"),
    ({"reward_weights": {"correct": 0.0, "format": 0.0}}, "at least one weight must be > 0"),
    ({"num_generations": 3, "batch_size": 4}, "must be a multiple of num_generations (3)"),
    ({"retry_by": "teacher"}, "unknown retry_by 'teacher'"),
    ({"retry_by": "base", "train_retry": True}, "train_retry: true needs retry_by: policy"),
])
def test_bad_rl_params_fail_with_one_clear_line(data, message):
    with pytest.raises(ReflectEvoError) as e:
        from_dict(RLHyper, data, "train.rl")
    assert message in str(e.value) and "\n" not in str(e.value)
