import pytest

from reflectevo.errors import ReflectEvoError
from reflectevo.tasks import extract_finish
from reflectevo.tasks.registry import get_task


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
    from reflectevo.tasks import check_prompting
    from reflectevo.tasks.registry import get_task

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


def test_a_multiple_choice_task_starts_without_importing_reasoning_gym_once_cached(tmp_path):
    """The generator names and a multiple-choice task's answer pool are cached per reasoning-gym version, so a
    second process builds the task, its few-shot prompt and its verdicts without the library's slow import
    (it loads every generator's module); the cached pool is the computed one; a corrupt cache file is rebuilt."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = ("import sys, json\nfrom reflectevo.tasks.registry import get_task\nfrom reflectevo.tasks.base import Item\n"
            "t = get_task('rg/family_relationships', {'choices': 4})\n"
            "shots = t.fewshot()\n"
            "it = Item(id='x', task=t.name, question='q', answer='B', choices=('a', 'b', 'c', 'd'))\n"
            "v = t.verify('Thought: t\\nAction: Finish[B]', it)\n"
            "print(json.dumps({'rg': 'reasoning_gym' in sys.modules, 'pool': t._answer_pool(), 'ok': v.correct,"
            " 'shots': len(shots)}))")
    env = {**os.environ, "REFLECTEVO_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(root)}

    def run() -> dict:
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    cold, warm = run(), run()
    assert cold["rg"] is True and warm["rg"] is False            # the second start skips the import
    assert warm["pool"] == cold["pool"] and len(warm["pool"]) >= 4 and warm["ok"] and warm["shots"] == cold["shots"]
    files = sorted((tmp_path / "cache" / "reasoning-gym").glob("*.json"))
    assert {f.name.split("-")[0] for f in files} == {"generators", "answer"}
    for f in files:
        f.write_text("{not json")
    rebuilt = run()
    assert rebuilt["rg"] is True and rebuilt["pool"] == cold["pool"]
    assert all(json.loads(f.read_text())["value"] for f in files)
