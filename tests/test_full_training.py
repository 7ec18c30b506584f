"""Full-parameter training (`train.method: full`) on the synthetic tiny model: an SFT step changes the base
weights and the saved folder loads alone (from_pretrained and the transformers backend) and generates; DPO
and GRPO train with a frozen reference copy."""

from __future__ import annotations

import dataclasses
import json

import pytest
from test_rl_training import RL, episodes
from test_training import CFG, _fp, dplus_rows, dpm_rows, one_thread  # noqa: F401 - one_thread: autouse fixture

from reflectevo.errors import ReflectEvoError
from reflectevo.training.data import rl_rows
from reflectevo.training.run import train_setting

FULL = dataclasses.replace(CFG, method="full")


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_a_full_sft_step_changes_the_base_and_the_folder_loads_and_generates(tiny_preset, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reflectevo.sampling import Sampling
    from reflectevo.backends.registry import make_backend
    from reflectevo.models.load import resolve_model

    preset = dataclasses.replace(tiny_preset, lr_full=1e-2)
    cfg = dataclasses.replace(FULL, sft=dataclasses.replace(CFG.sft, max_steps=1))
    result = train_setting("one_stage", "tiny-random", preset, _fp(preset), dplus_rows(2), [], cfg, tmp_path / "m")
    out = tmp_path / "m"
    assert result["trained"] and result["method"] == "full" and result["one_stage"]["steps"] == 1
    assert not (out / "adapter_config.json").exists() and not (out / "training_args.bin").exists()
    card = json.loads((out / "model_card.json").read_text())
    assert card["method"] == "full" and not card.get("vllm_lora")
    assert "AutoModelForCausalLM.from_pretrained" in (out / "README.md").read_text()
    base = AutoModelForCausalLM.from_pretrained(resolve_model("tiny-random", preset), dtype=torch.float32)
    trained = _weights(out)
    changed = [k for k, v in base.state_dict().items() if k in trained and not torch.equal(v, trained[k])]
    assert len(changed) > len(trained) // 2, changed            # every kind of weight moved, not a few
    # the folder loads on its own (weights + tokenizer) and generates
    model = AutoModelForCausalLM.from_pretrained(str(out))
    tok = AutoTokenizer.from_pretrained(str(out))
    ids = tok("Question: what is 2 + 1?", return_tensors="pt")
    gen = model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert gen.shape[1] == ids["input_ids"].shape[1] + 4
    # and through the transformers backend, in an adapter's place
    backend = make_backend("tiny-random", preset, out)
    [g] = backend.generate([backend.render([{"role": "user", "content": "What is 2 + 1?"}])], Sampling(4))
    assert g.n_new_tokens > 0 and all(torch.equal(p, trained[n]) for n, p in backend.model.state_dict().items()
                                      if n in trained)


def test_full_dpo_trains_against_a_frozen_reference(tiny_preset, tmp_path):
    cfg = dataclasses.replace(FULL, dpo=dataclasses.replace(CFG.dpo, max_steps=1))
    result = train_setting("dpo_pm", "tiny-random", tiny_preset, _fp(tiny_preset), dpm_rows(2), [], cfg, tmp_path / "m")
    card = json.loads((tmp_path / "m/model_card.json").read_text())
    assert result["trained"] and card["reference"] == "a frozen copy of the base" and (tmp_path / "m/config.json").exists()


def test_full_grpo_with_kl_to_a_frozen_reference(tiny_preset, tmp_path):
    cfg = dataclasses.replace(FULL, rl=dataclasses.replace(RL, max_steps=1, beta=0.1))
    result = train_setting("grpo_one_stage", "tiny-random", tiny_preset, _fp(tiny_preset),
                           rl_rows(episodes(2), "oracle"), [], cfg, tmp_path / "m")
    card = json.loads((tmp_path / "m/model_card.json").read_text())
    assert result["trained"] and card["reference"] == "a frozen copy of the base"
    assert "kl" in result["one_stage"] and (tmp_path / "m/model.safetensors").exists()


@pytest.mark.parametrize("method", ["lora", "full"])
def test_the_method_is_part_of_the_checkpoint_key(tiny_preset, method):
    from reflectevo.training.checkpoint import checkpoint_key

    key, what = checkpoint_key("one_stage", "one_stage", _fp(tiny_preset), tiny_preset, CFG.sft, 0, [], [],
                               method=method)
    other, _ = checkpoint_key("one_stage", "one_stage", _fp(tiny_preset), tiny_preset, CFG.sft, 0, [], [],
                              method="full" if method == "lora" else "lora")
    assert what["preset"]["method"] == method and key != other


def test_a_full_model_folder_gets_its_own_vllm_engine_without_lora(tiny_preset, tmp_path, monkeypatch):
    """With a FAKE vllm (tests/fake_vllm.py): a full-parameter save in an adapter's place is served as the
    engine's model, with no LoRARequest; the base keeps its own engine."""
    import fake_vllm as fake

    from reflectevo.backends.vllm_backend import VLLMBackend

    fake.install(monkeypatch)
    folder = tmp_path / "one_stage"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    preset = dataclasses.replace(tiny_preset, backend="vllm")
    full = VLLMBackend("tiny-random", preset, adapter=folder)
    assert full.lora is None and full.engine_kwargs["model"] == str(folder.resolve())
    assert full.engine_kwargs["revision"] is None
    assert len(fake.FakeLLM.instances) == 1
    # beside the base's engine (evaluate builds the base first) a second engine needs a smaller memory share
    fake.install(monkeypatch)
    VLLMBackend("tiny-random", preset, serves=[folder])
    with pytest.raises(ReflectEvoError, match="full-parameter model: vLLM needs a second engine"):
        VLLMBackend("tiny-random", preset, adapter=folder)


def test_gradient_checkpointing_reaches_the_trainer(tiny_preset, tmp_path):
    from reflectevo.training.offline import build_offline_trainer
    from reflectevo.training.data import examples

    cfg = dataclasses.replace(FULL, gradient_checkpointing=True)
    trainer = build_offline_trainer("sft", "tiny-random", tiny_preset, examples("one_stage", dplus_rows(2))["one_stage"],
                                    [], cfg, tmp_path)
    assert trainer.args.gradient_checkpointing is True
    assert all(p.requires_grad for p in trainer.model.parameters())        # full: every weight trains
    assert not hasattr(trainer.model, "peft_config")
