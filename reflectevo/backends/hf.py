"""transformers backend: batched generation with left padding, greedy or sampled.

Sampling is per row: each prompt has its own seed and its own random generator, and the token drawn at
each step depends only on that row's logits and generator. A sample therefore does not change with the
batch it lands in, the batch size, the device count or the point where a resumed run restarted
(`model.generate(do_sample=True)` draws all rows from one global generator, so it does). Technically,
`SeededSampler` is a logits processor that draws the next token of every row and masks all others;
generation then runs in greedy mode and picks exactly that token.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reflectevo.backends import Generation, Sampling, finish_text, prompt_seeds, stop_position
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

    def generate(self, prompts: list[str], sampling: Sampling,
                 seeds: Sequence[int] | None = None) -> list[Generation]:
        seeds = prompt_seeds(prompts, sampling, seeds)
        # Sort by length so each batch pads little; restore order at the end.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        results: dict[int, Generation] = {}
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            batch = self._generate_batch([prompts[i] for i in idx], sampling, [seeds[i] for i in idx])
            results.update(zip(idx, batch))
        return [results[i] for i in range(len(prompts))]

    def _generate_batch(self, prompts: list[str], sampling: Sampling, seeds: list[int]) -> list[Generation]:
        import torch
        from transformers import LogitsProcessorList

        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(self.model.device) for k, v in enc.items()}
        kwargs: dict[str, Any] = dict(max_new_tokens=sampling.max_new_tokens,
                                      pad_token_id=self.tokenizer.pad_token_id,
                                      do_sample=False, temperature=None, top_p=None, top_k=None)
        if sampling.temperature > 0:
            kwargs["logits_processor"] = LogitsProcessorList(
                [SeededSampler(seeds, sampling.temperature, sampling.top_p)])
        width = enc["input_ids"].shape[1]
        if sampling.stop or sampling.stop_regex:
            from transformers import StoppingCriteriaList

            kwargs["stopping_criteria"] = StoppingCriteriaList([StopOnText(self.tokenizer, width, sampling)])
        with torch.inference_mode():
            gen = self.model.generate(**enc, **kwargs)
        new = gen[:, width:]
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        pad = self.tokenizer.pad_token_id
        n_prompt = enc["attention_mask"].sum(dim=1).tolist()
        n_new = [int((row != pad).sum().item()) for row in new]
        out = []
        for t, p, n in zip(texts, n_prompt, n_new):
            text, reason = finish_text(t, sampling, "length" if n >= sampling.max_new_tokens else "eos")
            out.append(Generation(text, int(p), n, reason))
        return out


class StopOnText:
    """Stopping criterion, per row of a batch: a row is done once its decoded new text reaches one of
    `sampling`'s stops (`reflectevo.backends.stop_position`); the others go on. The text is cut at the
    stop afterwards (`finish_text`), exactly as the backends without this criterion cut it."""

    def __init__(self, tokenizer, prompt_width: int, sampling: Sampling) -> None:
        self.tokenizer = tokenizer
        self.width = prompt_width
        self.sampling = sampling
        self.done = None

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        if self.done is None:
            self.done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        rows = (~self.done).nonzero().flatten().tolist()
        if rows:
            texts = self.tokenizer.batch_decode(input_ids[rows, self.width:], skip_special_tokens=True)
            for r, t in zip(rows, texts):
                if stop_position(t, self.sampling) is not None:
                    self.done[r] = True
        return self.done.clone()


class SeededSampler:
    """Logits processor: draw each row's next token from softmax(logits / T) after top-p filtering,
    with that row's own generator, and leave only that token possible (greedy then picks it).

    The draw is by inverse CDF: one uniform number per row and step from the row's generator, located
    in the row's cumulative probabilities. That is vectorised over the batch (about 4 ms per step for
    64 rows x 49k vocabulary on 2 cores, where 64 `torch.multinomial` calls take about 55 ms)."""

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float = 1.0) -> None:
        import torch

        self.generators = [torch.Generator(device="cpu").manual_seed(int(s) % (2**63)) for s in seeds]
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, input_ids, scores):
        import torch

        logits = scores.float() / self.temperature
        if self.top_p < 1.0:
            sorted_logits, sorted_idx = torch.sort(logits, descending=True, dim=-1)
            p = sorted_logits.softmax(dim=-1)
            drop = p.cumsum(dim=-1) - p >= self.top_p   # keep the smallest set reaching top_p
            sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
            logits = torch.full_like(logits, float("-inf")).scatter(-1, sorted_idx, sorted_logits)
        cdf = logits.softmax(dim=-1).cpu().cumsum(dim=-1)
        u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in self.generators])
        # first index whose cumulative mass exceeds u * total: a token with non-zero probability
        picks = torch.searchsorted(cdf, (u.to(cdf.dtype) * cdf[:, -1]).unsqueeze(1), right=True).squeeze(1)
        picks = picks.clamp_(max=cdf.shape[1] - 1).to(scores.device)
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(len(picks), device=scores.device), picks] = 0.0
        return out


def make_backend(preset_name: str, preset: ModelPreset, adapter: str | Path | None = None):
    """Build the preset's backend: transformers, vllm or openai (`reflectevo.backends.make_backend`)."""
    from reflectevo.backends import make_backend as build

    return build(preset_name, preset, adapter=adapter)
