"""Learning settings on the synthetic tiny model: label masks per setting, adapters, portability."""

from __future__ import annotations

import dataclasses
import json

import pytest

from reflectevo.training.config import DPOHyper, SFTHyper, TrainConfig
from reflectevo.models.fingerprint import model_fingerprint
from reflectevo.prompts import one_stage_target
from reflectevo.training.offline import build_offline_trainer
from reflectevo.training.data import examples
from reflectevo.training.run import train_setting


def dplus_rows(n=6):
    return [{"id": f"s{i}", "item_id": f"item-{i}", "task": "rg/chain_sum", "question": f"What is {i} + 1?",
             "choices": None, "answer": str(i + 1), "trial1": f"Thought: guess.\nAction: Finish[{i}]",
             "reflection": "I forgot to add one. Plan: add carefully.",
             "trial2": f"Thought: {i} + 1 = {i + 1}.\nAction: Finish[{i + 1}]"} for i in range(n)]


def dpm_rows(n=4):
    rows = []
    for r in dplus_rows(n):
        side = lambda text, ok: {"sample_id": "x", "demand_id": "1-1-1", "reflection": text, "trial2": "t",  # noqa: E731
                                 "trial2_answer": "1", "trial2_correct": ok}
        rows.append({**{k: r[k] for k in ("id", "item_id", "task", "question", "choices", "answer", "trial1")},
                     "chosen": side("Add one to the number, carefully.", True),
                     "rejected": side("The question is about colours.", False)})
    return rows


def item_rows(n=6):
    return [{"id": f"item-{i}", "task": "rg/chain_sum", "question": f"What is {i} + 2?", "choices": None,
             "answer": str(i + 2), "tests": None, "meta": {}} for i in range(n)]


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: a ~100k-parameter model gains nothing from more, and on a busy 2-core machine
    thread spinning makes each step several times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


HP = SFTHyper(epochs=1.0, max_steps=3, batch_size=2, grad_accum=1, max_length=1024, warmup_ratio=0.0)
CFG = TrainConfig(seed=0, sft=HP, dpo=DPOHyper(**dataclasses.asdict(HP), beta=0.1))
FP = None


def _fp(preset):
    return model_fingerprint("tiny-random", preset)


def _target_tokens(ex):
    mask = [int(lab != -100) for lab in ex["labels"]]  # what the loss sees
    assert all(lab in (-100, tid) for lab, tid in zip(ex["labels"], ex["input_ids"]))
    first = mask.index(1)
    assert all(mask[first:]) and not any(mask[:first])   # one contiguous target span at the end
    return ex["input_ids"][:first], ex["input_ids"][first:]


@pytest.mark.parametrize("setting,role,target_of", [
    ("one_stage", "one_stage", lambda r: one_stage_target(r["reflection"], r["trial2"])),
    ("two_stage", "reflector", lambda r: r["reflection"]),
    ("two_stage", "corrector", lambda r: r["trial2"]),
    ("sft_qa", "answerer", lambda r: f"Action: Finish[{r['answer']}]"),
])
def test_sft_loss_covers_exactly_the_target(tiny_preset, tmp_path, setting, role, target_of):
    rows = item_rows(2) if setting == "sft_qa" else dplus_rows(2)
    trainer = build_offline_trainer("sft", "tiny-random", tiny_preset, examples(setting, rows)[role], [], CFG, tmp_path)
    tok = trainer.processing_class
    prompt_ids, target_ids = _target_tokens(trainer.train_dataset[0])
    target = tok.decode(target_ids)
    expected = target_of(rows[0])
    assert target.startswith(expected) and target[len(expected):].strip() in ("<|im_end|>", "")
    prompt = tok.decode(prompt_ids)
    if setting != "sft_qa":  # every reflection-learning prompt shows the failed attempt and the failure notice
        assert rows[0]["trial1"] in prompt
        assert "Answer is INCORRECT" in prompt or "judged incorrect" in prompt
    if role == "corrector":
        assert rows[0]["reflection"] in prompt and rows[0]["trial2"] not in prompt
    if role in ("reflector", "one_stage"):
        assert rows[0]["reflection"] not in prompt
    assert f"Finish[{rows[0]['answer']}]" not in prompt  # the target never leaks into its own prompt


@pytest.mark.parametrize("setting", ["dpo_pm", "dpo_pref"])
def test_dpo_pairs_share_the_prompt_and_differ_in_the_reflection(tiny_preset, tmp_path, setting):
    rows = dpm_rows(2)  # D± and Dpref rows have the same schema
    trainer = build_offline_trainer("dpo", "tiny-random", tiny_preset, examples(setting, rows)["reflector"], [], CFG, tmp_path)
    tok = trainer.processing_class
    ex = trainer.train_dataset[0]
    prompt = tok.decode(ex["prompt_ids"])
    assert rows[0]["trial1"] in prompt and "Answer is INCORRECT" in prompt
    assert rows[0]["chosen"]["reflection"] not in prompt and rows[0]["rejected"]["reflection"] not in prompt
    assert tok.decode(ex["chosen_ids"]).startswith(rows[0]["chosen"]["reflection"])
    assert tok.decode(ex["rejected_ids"]).startswith(rows[0]["rejected"]["reflection"])
    # the mask the DPO loss uses (the collator's completion_mask): exactly the chosen / rejected reflection turn
    batch = trainer.data_collator([ex])
    for row, side in ((0, "chosen"), (1, "rejected")):
        ids, mask = batch["input_ids"][row].tolist(), batch["completion_mask"][row].tolist()
        first = mask.index(1)
        assert all(mask[first:first + sum(mask)]) and ids[:first] == ex["prompt_ids"]
        target = tok.decode([i for i, m in zip(ids, mask) if m])
        assert target.startswith(rows[0][side]["reflection"])
        assert target[len(rows[0][side]["reflection"]):].strip() in ("<|im_end|>", "")


def test_one_stage_writes_a_portable_adapter_that_loads(tiny_preset, tmp_path):
    out = tmp_path / "one_stage"
    res = train_setting("one_stage", "tiny-random", tiny_preset, _fp(tiny_preset), dplus_rows(6), dplus_rows(2), CFG, out)
    assert res["trained"] and res["one_stage"]["steps"] == 3 and res["one_stage"]["eval_loss"] is not None
    assert res["one_stage"]["train_tokens_per_s"] > 0
    files = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "model_card.json", "README.md"} <= files
    assert "checkpoints" not in files and "training_args.bin" not in files
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "reflectevo-preset:tiny-random"
    assert str(tmp_path) not in (out / "adapter_config.json").read_text() + (out / "README.md").read_text()
    card = json.loads((out / "model_card.json").read_text())
    assert card["status"] == "trained" and card["base"]["preset"] == "tiny-random" and card["adapters"] == {"one_stage": "."}
    assert card["vllm_lora_compatible"] is True and card["vllm_lora"]["one_stage"]["reasons"] == []
    assert card["resumed_from_step"] == {"one_stage": 0} and res["one_stage"]["resumed_from_step"] == 0
    assert "vLLM LoRA: compatible by static check" in (out / "README.md").read_text()

    import torch
    from safetensors.torch import load_file

    from reflectevo.backends.hf import TransformersBackend

    weights = load_file(out / "adapter_model.safetensors")
    assert any("lora_B" in k and torch.count_nonzero(v) > 0 for k, v in weights.items())  # it learned something
    trained = TransformersBackend("tiny-random", tiny_preset, adapter=out)
    base = TransformersBackend("tiny-random", tiny_preset)
    x = base.tokenizer("Thought: check", return_tensors="pt")
    with torch.no_grad():
        assert not torch.allclose(trained.model(**x).logits, base.model(**x).logits)


def test_two_stage_trains_two_adapters_and_dpo_one(tiny_preset, tmp_path):
    res = train_setting("two_stage", "tiny-random", tiny_preset, _fp(tiny_preset), dplus_rows(4), [], CFG, tmp_path / "ts")
    assert res["trained"] and set(res) >= {"reflector", "corrector"}
    card = json.loads((tmp_path / "ts/model_card.json").read_text())
    assert card["adapters"] == {"reflector": "reflector", "corrector": "corrector"}
    for role in ("reflector", "corrector"):
        assert (tmp_path / "ts" / role / "adapter_model.safetensors").exists()
        from huggingface_hub import ModelCard

        role_card = ModelCard.load(tmp_path / "ts" / role / "README.md")  # ours (Hub metadata), not PEFT's
        assert role_card.data.library_name == "peft" and role_card.data.tags[:2] == ["reflectevo", "two_stage"]
        assert f"# reflectevo `two_stage` · `{role}`" in role_card.text and str(tmp_path) not in role_card.content
    a = (tmp_path / "ts/reflector/adapter_model.safetensors").read_bytes()
    assert a != (tmp_path / "ts/corrector/adapter_model.safetensors").read_bytes()
    res = train_setting("dpo_pm", "tiny-random", tiny_preset, _fp(tiny_preset), dpm_rows(4), [], CFG, tmp_path / "dpo")
    assert res["trained"] and res["reflector"]["reward_accuracy"] is not None
    card = json.loads((tmp_path / "dpo/model_card.json").read_text())
    assert card["adapters"] == {"reflector": "."} and card["vllm_lora_compatible"] is True


def test_training_is_reproducible(tiny_preset, tmp_path):
    a = train_setting("one_stage", "tiny-random", tiny_preset, _fp(tiny_preset), dplus_rows(4), [], CFG, tmp_path / "a")
    b = train_setting("one_stage", "tiny-random", tiny_preset, _fp(tiny_preset), dplus_rows(4), [], CFG, tmp_path / "b")
    assert a["one_stage"]["train_loss"] == pytest.approx(b["one_stage"]["train_loss"])
    assert (tmp_path / "a/adapter_model.safetensors").read_bytes() == (tmp_path / "b/adapter_model.safetensors").read_bytes()


@pytest.mark.parametrize("setting,reason", [("one_stage", "D+ is empty"), ("dpo_pref", "Dpref is empty"),
                                            ("sft_qa", "the train split is empty")])
def test_empty_data_is_recorded(tiny_preset, tmp_path, setting, reason):
    res = train_setting(setting, "tiny-random", tiny_preset, _fp(tiny_preset), [], [], CFG, tmp_path / "m")
    assert res["trained"] is False and reason in res["reason"]
    assert json.loads((tmp_path / "m/model_card.json").read_text())["status"] == "no training data"


def test_examples_cut_away_by_truncation_are_reported(tiny_preset, tmp_path):
    short = dataclasses.replace(CFG, sft=dataclasses.replace(HP, max_length=32))
    res = train_setting("one_stage", "tiny-random", tiny_preset, _fp(tiny_preset), dplus_rows(3), [], short, tmp_path / "m")
    assert res["trained"] is False and "raise train.sft.max_length" in res["reason"]
    card = json.loads((tmp_path / "m/model_card.json").read_text())
    assert card["status"] == "no training data" and card["dropped_by_truncation"] == {"one_stage": 3}


def test_curves_are_logged_against_the_global_step(tiny_preset, tmp_path):
    import csv

    res = train_setting("two_stage", "tiny-random", tiny_preset, _fp(tiny_preset), dplus_rows(4), dplus_rows(2), CFG,
                        tmp_path / "m", curves_dir=tmp_path / "curves")
    assert res["trained"]
    for role in ("reflector", "corrector"):
        loss = tmp_path / f"curves/plots/metrics/{role}/loss.tsv"
        rows = list(csv.DictReader(loss.open(), delimiter="\t"))
        assert [int(r["step"]) for r in rows] == [1, 2, 3]        # global steps, not log-event counts
        ev = list(csv.DictReader((tmp_path / f"curves/plots/metrics/{role}/eval_loss.tsv").open(), delimiter="\t"))
        assert [int(r["step"]) for r in ev] == [2, 3]             # end of each epoch (2 steps/epoch), and the end
    assert not (tmp_path / "curves/dvc.yaml").exists()


def test_qlora_on_a_cpu_machine_is_one_clear_error(tiny_preset, tmp_path):
    import torch

    from reflectevo.errors import ReflectEvoError

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: QLoRA may run here")
    q = dataclasses.replace(tiny_preset, quantization="4bit")
    with pytest.raises(ReflectEvoError, match=r"models.tiny-random.quantization: 4bit \(QLoRA\) needs a CUDA GPU"):
        train_setting("one_stage", "tiny-random", q, _fp(q), dplus_rows(2), [], CFG, tmp_path / "m")


def test_accelerate_configs_load():
    from pathlib import Path

    from accelerate.commands.config.config_args import load_config_from_file

    root = Path(__file__).resolve().parents[1] / "configs" / "accelerate"
    kinds = {load_config_from_file(str(p)).distributed_type.value for p in root.glob("*.yaml")}
    assert kinds == {"DEEPSPEED", "FSDP", "MULTI_GPU"}   # MULTI_GPU: multi_cpu.yaml (two gloo processes)
