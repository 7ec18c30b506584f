from reflectevo.prompts import (demand_pool, one_stage_messages, one_stage_target, reflection_messages,
                                split_one_stage, trial_messages)
from reflectevo.protocol.version import prompt_version
from reflectevo.tasks import Item
from reflectevo.tasks.registry import get_task


def test_pool_has_32_vep_entries():
    pool = demand_pool()
    assert len(pool) == 32
    assert {k.count("-") for k in pool} == {2}
    assert {k.split("-")[1] for k in pool} == {str(i) for i in range(1, 9)}
    assert len({v["text"] for v in pool.values()}) == 32


def test_prompt_version_is_stable_and_short():
    assert prompt_version() == prompt_version() and prompt_version().startswith("v2-")


def test_no_gold_in_any_prompt():
    task = get_task("rg/chain_sum")
    item = Item(id="x", task="rg/chain_sum", question="What is GOLDQ?", answer="ZQXGOLD")
    texts = [trial_messages(task, item), trial_messages(task, item, reflection="r", previous="p"),
             reflection_messages(item, "my try", "1-1-1"), reflection_messages(item, "my try", None),
             one_stage_messages(task, item, "my try")]
    for msgs in texts:
        assert all("ZQXGOLD" not in m["content"] for m in msgs)


def test_one_stage_roundtrip():
    target = one_stage_target("I slipped.", "Thought: t\nAction: Finish[3]")
    assert split_one_stage(target) == ("I slipped.", "Thought: t\nAction: Finish[3]")
    assert split_one_stage("only a reflection") == ("only a reflection", "")


def test_fewshot_is_an_earlier_turn_and_the_item_is_last():
    task = get_task("rg/chain_sum")
    item = Item(id="x", task="rg/chain_sum", question="What is 1 + 1?", answer="2")
    msgs = trial_messages(task, item)
    n = len(task.fewshot())
    assert n >= 2 and [m["role"] for m in msgs] == ["user", "assistant"] * n + ["user"]
    assert "Finish[" in msgs[1]["content"] and "Think step by step" in msgs[0]["content"]
    # worked examples compute their answer (a thought without reasoning teaches the model not to reason)
    for shot in msgs[1:-1:2]:
        assert shot["content"].startswith("Thought: ") and "=" in shot["content"]
    assert msgs[-1]["content"].endswith("What is 1 + 1?") and "Think step by step" not in msgs[-1]["content"]
