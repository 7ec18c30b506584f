"""One-stage SFT on the synthetic tiny model: label mask, adapter files, portability, reload."""

from __future__ import annotations

import json

import pytest

from reflectevo.config import TrainConfig
from reflectevo.models import model_fingerprint
from reflectevo.prompts import one_stage_target
from reflectevo.training import build_sft_trainer, one_stage_examples, train_sft


def dplus_rows(n=6):
    return [{"id": f"s{i}", "item_id": f"item-{i}", "task": "rg/chain_sum", "question": f"What is {i} + 1?",
             "choices": None, "answer": str(i + 1), "trial1": f"Thought: guess.\nAction: Finish[{i}]",
             "reflection": "I forgot to add one. Plan: add carefully.",
             "trial2": f"Thought: {i} + 1 = {i + 1}.\nAction: Finish[{i + 1}]"} for i in range(n)]


CFG = TrainConfig(setting="one_stage", epochs=1.0, max_steps=3, batch_size=2, grad_accum=1, max_length=1024,
                  warmup_ratio=0.0, seed=0)


def test_loss_covers_exactly_the_target(tiny_preset, tmp_path):
    rows = dplus_rows(2)
    trainer = build_sft_trainer("tiny-random", tiny_preset, one_stage_examples(rows), [], CFG, tmp_path)
    tok = trainer.processing_class
    ex = trainer.train_dataset[0]
    ids = ex["input_ids"]
    mask = [int(lab != -100) for lab in ex["labels"]]  # what the loss sees
    assert all(lab in (-100, tid) for lab, tid in zip(ex["labels"], ids))
    assert 0 < sum(mask) < len(ids)
    first = mask.index(1)
    assert all(mask[first:]) and not any(mask[:first])       # one contiguous target span at the end
    target = tok.decode([t for t, m in zip(ids, mask) if m])
    expected = one_stage_target(rows[0]["reflection"], rows[0]["trial2"])
    assert target.startswith(expected)
    assert target[len(expected):].strip() in ("<|im_end|>", "")   # only the end-of-turn token beyond it
    prompt = tok.decode(ids[:first])
    assert "Previous attempt:" in prompt and rows[0]["trial1"].strip() in prompt
    assert rows[0]["reflection"] not in prompt


def test_train_writes_a_portable_adapter_that_loads(tiny_preset, tmp_path):
    out = tmp_path / "one_stage"
    res = train_sft("tiny-random", tiny_preset, model_fingerprint("tiny-random", tiny_preset), dplus_rows(6),
                    dplus_rows(2), CFG, out)
    assert res["trained"] and res["steps"] == 3 and res["eval_loss"] is not None
    files = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "model_card.json", "README.md"} <= files
    assert "checkpoints" not in files and "training_args.bin" not in files
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "reflectevo-preset:tiny-random"
    assert str(tmp_path) not in (out / "adapter_config.json").read_text()
    card = json.loads((out / "model_card.json").read_text())
    assert card["status"] == "trained" and card["base"]["preset"] == "tiny-random" and card["n_train"] == 6

    import torch
    from safetensors.torch import load_file

    weights = load_file(out / "adapter_model.safetensors")
    assert any("lora_B" in k and torch.count_nonzero(v) > 0 for k, v in weights.items())  # it learned something
    from reflectevo.backends.hf import TransformersBackend

    trained = TransformersBackend("tiny-random", tiny_preset, adapter=out)
    base = TransformersBackend("tiny-random", tiny_preset)
    x = base.tokenizer("Thought: check", return_tensors="pt")
    with torch.no_grad():
        assert not torch.allclose(trained.model(**x).logits, base.model(**x).logits)


def test_training_is_reproducible(tiny_preset, tmp_path):
    fp = model_fingerprint("tiny-random", tiny_preset)
    a = train_sft("tiny-random", tiny_preset, fp, dplus_rows(4), [], CFG, tmp_path / "a")
    b = train_sft("tiny-random", tiny_preset, fp, dplus_rows(4), [], CFG, tmp_path / "b")
    assert a["train_loss"] == pytest.approx(b["train_loss"])
    assert (tmp_path / "a/adapter_model.safetensors").read_bytes() == (tmp_path / "b/adapter_model.safetensors").read_bytes()


def test_examples_cut_away_by_truncation_are_reported(tiny_preset, tmp_path):
    import dataclasses

    short = dataclasses.replace(CFG, max_length=32)
    res = train_sft("tiny-random", tiny_preset, model_fingerprint("tiny-random", tiny_preset), dplus_rows(3), [],
                    short, tmp_path / "m")
    assert res["trained"] is False and res["dropped_by_truncation"] == 3
    assert "raise train.max_length" in res["reason"]
    assert json.loads((tmp_path / "m/model_card.json").read_text())["status"] == "no training data"
