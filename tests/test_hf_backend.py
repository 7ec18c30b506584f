"""The transformers backend generates from exactly the sampling parameters we record: a checkpoint's own
generation_config (penalties, default top_k/top_p/temperature, beams, a minimum length) changes nothing,
as with vLLM's explicit SamplingParams; stop tokens and token counts match the vLLM backend's."""

from __future__ import annotations

import json
import shutil

import pytest

from reflectevo.sampling import Sampling
from reflectevo.config.presets import ModelPreset

NOISY = {"repetition_penalty": 5.0, "no_repeat_ngram_size": 2, "num_beams": 3, "min_new_tokens": 6,
         "do_sample": True, "top_k": 2, "top_p": 0.1, "temperature": 0.05}


@pytest.fixture(scope="module")
def backends(tiny_model_dir, tmp_path_factory):
    from reflectevo.backends.hf import TransformersBackend

    noisy_dir = shutil.copytree(tiny_model_dir, tmp_path_factory.mktemp("noisy") / "model")
    cfg = json.loads((noisy_dir / "generation_config.json").read_text())
    (noisy_dir / "generation_config.json").write_text(json.dumps({**cfg, **NOISY}))
    plain = TransformersBackend("plain", ModelPreset(source="hub", path=str(tiny_model_dir), dtype="float32"))
    noisy = TransformersBackend("noisy", ModelPreset(source="hub", path=str(noisy_dir), dtype="float32"))
    return plain, noisy, noisy_dir


def _prompts(b):
    return [b.render([{"role": "user", "content": q}]) for q in ("What is 2 + 3?", "Is every cat an animal?",
                                                                 "Name the final answer then check it.")]


def test_a_checkpoint_generation_config_changes_nothing(backends):
    plain, noisy, _ = backends
    prompts = _prompts(plain)
    for sampling, seeds in ((Sampling(12), None), (Sampling(12, temperature=0.9, top_p=0.95), [3, 5, 7])):
        a, b = plain.generate(prompts, sampling, seeds), noisy.generate(prompts, sampling, seeds)
        assert [(g.text, g.n_new_tokens) for g in a] == [(g.text, g.n_new_tokens) for g in b]
    assert noisy.model.generation_config.repetition_penalty in (None, 1.0)


def test_the_checkpoint_config_would_have_changed_the_output(backends):
    """The test above is not vacuous: applied, the checkpoint's config changes the greedy output."""
    import torch
    from transformers import GenerationConfig

    plain, noisy, noisy_dir = backends
    shipped = GenerationConfig.from_pretrained(noisy_dir)
    assert shipped.repetition_penalty == 5.0
    enc = plain.tokenizer(_prompts(plain), return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        ours = noisy.model.generate(**enc, max_new_tokens=12, do_sample=False)
        theirs = noisy.model.generate(**enc, generation_config=shipped, max_new_tokens=12, do_sample=False)
    assert not torch.equal(ours, theirs)


def test_stop_ids_and_token_counts_match_vllms():
    import types

    from reflectevo.backends.hf import plain_generation_config, stop_token_ids

    tok = types.SimpleNamespace(eos_token_id=7, pad_token_id=9)
    shipped = types.SimpleNamespace(eos_token_id=[8, 7], bos_token_id=1, repetition_penalty=1.3)
    assert stop_token_ids(shipped, tok) == [7, 8]             # the tokenizer's EOS and the config's, as vLLM stops
    cfg = plain_generation_config(shipped, tok)
    assert cfg.eos_token_id == [7, 8] and cfg.pad_token_id == 9 and cfg.bos_token_id == 1
    assert cfg.repetition_penalty in (None, 1.0) and cfg.num_beams in (None, 1)
    # the decode loop never appends a stop id to a row, so n_new_tokens leaves the EOS out (as vLLM's count)


def test_sampling_and_scoring_keep_the_vocabulary_on_the_device(backends, monkeypatch):
    """On a GPU the [rows, vocab] probabilities never leave it: the seeded draw uses only the rows' uniform
    numbers from their CPU generators (so a row's stream is the same on every device), and scoring takes each
    row's target log-probabilities from its own logits ([positions, vocab]) instead of a float32 log_softmax of
    the whole batch's [rows, positions, vocab]. Same draws and scores as before."""
    import torch

    from reflectevo.backends.hf import SeededSampler

    plain, _, _ = backends
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(1))
    # the earlier draw: the cumulative probabilities computed on the CPU
    gens = [torch.Generator().manual_seed(s) for s in range(6)]
    cdf = (logits / 0.7).softmax(-1).cpu().cumsum(-1)
    u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in gens]).to(cdf.dtype)
    want = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1), right=True).squeeze(1)
    moved = []
    real_cpu = torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, "cpu", lambda self, *a, **k: moved.append(tuple(self.shape)) or real_cpu(self, *a, **k))
    got = SeededSampler(range(6), 0.7)(None, logits).argmax(-1)
    assert torch.equal(got, want) and not [s for s in moved if len(s) > 1]

    prompts = _prompts(plain)
    conts = [" Finish[5]", " Yes it is. Finish[Yes]", " Finish[check]"]
    shapes, vocab = [], plain.model.config.vocab_size
    real_float = torch.Tensor.float
    monkeypatch.setattr(torch.Tensor, "float", lambda self: shapes.append(tuple(self.shape)) or real_float(self))
    scores = plain.score(prompts, conts)
    monkeypatch.setattr(torch.Tensor, "float", real_float)
    over_vocab = [s for s in shapes if s[-1] == vocab]
    assert over_vocab and max(len(s) for s in over_vocab) == 2          # never [rows, positions, vocab]
    tok = plain.tokenizer
    for p, c, s in zip(prompts, conts, scores):
        ids = tok(p, add_special_tokens=False)["input_ids"]
        cs = tok(c, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            lp = plain.model(input_ids=torch.tensor([ids + cs])).logits[0].float().log_softmax(-1)
        ref = sum(float(lp[len(ids) - 1 + i, t]) for i, t in enumerate(cs))
        assert s == pytest.approx(ref, abs=1e-4)


def test_the_shared_prefix_kernel_is_for_the_cpu_only(tiny_model_dir, monkeypatch):
    """The shared-prefix attention (a float32 kernel that saves a CPU's memory traffic) is installed on a CPU
    model only; on CUDA the model keeps its own (fused SDPA / flash) attention."""
    import torch
    from transformers import LlamaForCausalLM

    from reflectevo.models import load as models
    from reflectevo.backends import shared_prefix
    from reflectevo.backends.hf import TransformersBackend

    preset = ModelPreset(source="hub", path=str(tiny_model_dir), dtype="float32")
    assert TransformersBackend("p", preset).cascade is True
    installed = []
    monkeypatch.setattr(shared_prefix, "install", lambda model: installed.append(model) or True)
    real_load = models.load_model

    def load_on_cuda(*a, **k):   # the loaded model then reports a CUDA device, as `load_model` leaves it on a GPU
        model = real_load(*a, **k)
        monkeypatch.setattr(LlamaForCausalLM, "device", property(lambda self: torch.device("cuda", 0)))
        return model

    monkeypatch.setattr(models, "load_model", load_on_cuda)
    b = TransformersBackend("p", preset)
    assert b.cascade is False and installed == [] and b.model.config._attn_implementation == "sdpa"
