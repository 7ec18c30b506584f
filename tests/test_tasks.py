import pytest

from reflectevo.errors import ReflectEvoError
from reflectevo.tasks import extract_finish, get_task


@pytest.mark.parametrize("text,expected", [
    ("Thought: x\nAction: Finish[ B ]", "B"),
    ("Action: Finish[b]", "b"),
    ("Action: Finish[B.]", "B."),
    ("Action: Finish<<<\\frac{1}{2}>>>", "\\frac{1}{2}"),
    ("Finish[1] then Finish[2] and trailing text", "1"),  # the first complete answer counts (as the original)
    ("Action: Finish[7]\nQuestion: ... Action: Finish[<answer>]", "7"),
    ("The answer is 42.", "42"),
    ("Answer: 7", "7"),
    ("no answer at all", None),
])
def test_extract_finish(text, expected):
    assert extract_finish(text) == expected


def test_reasoning_gym_splits_are_disjoint_and_deterministic():
    task = get_task("rg/chain_sum", {"min_terms": 2, "max_terms": 3, "max_digits": 2})
    train, test = task.load("train", 30, seed=0), task.load("test", 10, seed=0)
    assert len(train) == 30 and len(test) == 10
    assert not {i.question for i in train} & {i.question for i in test}
    assert not {i.id for i in train} & {i.id for i in test}
    assert [i.to_dict() for i in task.load("train", 30, seed=0)] == [i.to_dict() for i in train]


def test_reasoning_gym_verifier_uses_its_scorer():
    task = get_task("rg/chain_sum")
    item = task.load("test", 3)[0]
    assert task.verify(f"Thought: ok\nAction: Finish[{item.answer}]", item).correct
    wrong = task.verify("Action: Finish[not a number]", item)
    assert not wrong.correct and wrong.extracted == "not a number"
    missing = task.verify("I have no idea", item)
    assert not missing.correct and missing.error == "no answer found"


def test_unknown_task_and_bad_options():
    with pytest.raises(ReflectEvoError, match="Did you mean 'rg/leg_counting'"):
        get_task("rg/leg_countin")
    with pytest.raises(ReflectEvoError, match="bad generator options"):
        get_task("rg/chain_sum", {"nope": 1}).load("test", 2)


def test_reasoning_gym_multiple_choice_variant():
    """`choices: N` turns a reasoning-gym task into multiple choice: the gold among N - 1 distractors from
    the generator's own answers, deterministic per question, the letter as the answer."""
    from reflectevo.errors import ReflectEvoError
    from reflectevo.tasks import check_prompting, get_task

    task = get_task("rg/family_relationships", {"choices": 4})
    items = task.load("test", 5, 0)
    again = get_task("rg/family_relationships", {"choices": 4}).load("test", 5, 0)
    assert items == again
    for it in items:
        assert len(it.choices) == 4 and len(set(it.choices)) == 4
        assert it.choices[ord(it.answer) - 65] == it.meta["rg_answer"]
        assert task.verify(f"Thought: t\nAction: Finish[{it.answer}]", it).correct
        assert task.verify(f"Action: Finish[{it.meta['rg_answer']}]", it).correct      # the option text counts too
        wrong = next(chr(65 + i) for i in range(4) if chr(65 + i) != it.answer)
        assert not task.verify(f"Action: Finish[{wrong}]", it).correct
    shots = task.fewshot()
    assert all("\nA. " in q and c.endswith("]") and "That is option" in c for q, c in shots)
    check_prompting(task, items[0])
    with pytest.raises(ReflectEvoError, match="choices must be >= 3"):
        get_task("rg/family_relationships", {"choices": 2})
    with pytest.raises(ReflectEvoError, match=r"choices 40 needs that many distinct answers"):
        get_task("rg/family_relationships", {"choices": 40})
