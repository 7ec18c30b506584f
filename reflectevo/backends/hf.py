"""transformers backend: batched generation with left padding, greedy or sampled."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reflectevo.backends import Generation, Sampling
from reflectevo.config import ModelPreset


class TransformersBackend:
    name = "transformers"

    def __init__(self, preset_name: str, preset: ModelPreset, adapter: str | Path | None = None,
                 batch_size: int | None = None) -> None:
        import torch

        from reflectevo.models import load_model, load_tokenizer

        torch.set_num_threads(max(1, torch.get_num_threads()))
        self.tokenizer = load_tokenizer(preset_name, preset)
        self.tokenizer.padding_side = "left"
        self.model = load_model(preset_name, preset, adapter=adapter)
        self.batch_size = batch_size or preset.gen_batch_size
        self.dtype = str(self.model.dtype).replace("torch.", "")

    def render(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def generate(self, prompts: list[str], sampling: Sampling) -> list[Generation]:
        out: list[Generation] = []
        # Sort by length so each batch pads little; restore order at the end.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        results: dict[int, Generation] = {}
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            batch = self._generate_batch([prompts[i] for i in idx], sampling, start)
            results.update(zip(idx, batch))
        out = [results[i] for i in range(len(prompts))]
        return out

    def _generate_batch(self, prompts: list[str], sampling: Sampling, offset: int) -> list[Generation]:
        import torch

        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(self.model.device) for k, v in enc.items()}
        kwargs: dict[str, Any] = dict(max_new_tokens=sampling.max_new_tokens,
                                      pad_token_id=self.tokenizer.pad_token_id)
        if sampling.temperature > 0:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
            torch.manual_seed(sampling.seed + offset)  # same prompts + seed -> same samples, any hardware
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            gen = self.model.generate(**enc, **kwargs)
        new = gen[:, enc["input_ids"].shape[1]:]
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        pad = self.tokenizer.pad_token_id
        n_prompt = enc["attention_mask"].sum(dim=1).tolist()
        n_new = [(row != pad).sum().item() for row in new]
        return [Generation(t, int(p), int(n)) for t, p, n in zip(texts, n_prompt, n_new)]


def make_backend(preset_name: str, preset: ModelPreset, adapter: str | Path | None = None):
    """Build the preset's backend (transformers on CPU; vllm/openai are added by later issues)."""
    from reflectevo.backends import BACKENDS
    from reflectevo.errors import ReflectEvoError

    if preset.backend != "transformers":
        # Only the transformers backend exists so far; fail with the reason instead of guessing.
        BACKENDS.get(preset.backend, where=f"models.{preset_name}.backend")
        raise ReflectEvoError(f"models.{preset_name}.backend: {preset.backend!r} is not available")
    return TransformersBackend(preset_name, preset, adapter=adapter)
