"""transformers backend: batched generation with left padding, greedy or sampled.

Sampling is per row: each prompt has its own seed and its own random generator, and the token drawn at
each step depends only on that row's logits and generator. A sample therefore does not change with the
batch it lands in, the batch size, the device count or the point where a resumed run restarted
(`model.generate(do_sample=True)` draws all rows from one global generator, so it does). Technically,
`SeededSampler` is a logits processor that draws the next token of every row and masks all others;
generation then runs in greedy mode and picks exactly that token.

Generation uses exactly the sampling parameters we record: the checkpoint's own `generation_config`
(a repetition penalty, default top_k/top_p/temperature, beams, a minimum length ...) is replaced at load
by one that keeps only its special token ids (`plain_generation_config`), as offline vLLM does with
explicit `SamplingParams`. Both backends stop at the tokenizer's EOS and at the checkpoint's
`generation_config.eos_token_id`s, and neither counts that stop token in `n_new_tokens`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reflectevo.backends import Generation, Sampling, prompt_seeds
from reflectevo.config import ModelPreset

# How sampled tokens are drawn (part of every episode key, = reflectevo.generation.SAMPLER): one seed per
# sample, one random generator per row, inverse-CDF draw (`SeededSampler`; v1 drew with torch.multinomial).
SAMPLER = "per-sample-seed-v2"


class TransformersBackend:
    name = "transformers"
    sampler = SAMPLER

    def __init__(self, preset_name: str, preset: ModelPreset, adapter: str | Path | None = None,
                 batch_size: int | None = None) -> None:
        import torch

        from reflectevo.models import load_model, load_tokenizer

        torch.set_num_threads(max(1, torch.get_num_threads()))
        self.tokenizer = load_tokenizer(preset_name, preset)
        self.tokenizer.padding_side = "left"
        self.model = load_model(preset_name, preset, adapter=adapter)
        self.model.generation_config = plain_generation_config(self.model.generation_config, self.tokenizer)
        self.stop_ids = stop_token_ids(self.model.generation_config, self.tokenizer)
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

        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(self.model.device) for k, v in enc.items()}
        kwargs = generation_kwargs(sampling, seeds, self.tokenizer.pad_token_id)
        with torch.inference_mode():
            gen = self.model.generate(**enc, **kwargs)
        new = gen[:, enc["input_ids"].shape[1]:]
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        n_prompt = enc["attention_mask"].sum(dim=1).tolist()
        n_new = [new_token_count(row.tolist(), self.stop_ids) for row in new]
        return [Generation(t, int(p), int(n)) for t, p, n in zip(texts, n_prompt, n_new)]


def generation_kwargs(sampling: Sampling, seeds: Sequence[int], pad_token_id: int | None) -> dict[str, Any]:
    """`model.generate` keyword arguments for one batch: greedy decoding, and for sampled rows our
    `SeededSampler` picks each token (generation stays greedy and takes it)."""
    from transformers import LogitsProcessorList

    kwargs: dict[str, Any] = dict(max_new_tokens=sampling.max_new_tokens, pad_token_id=pad_token_id,
                                  do_sample=False, temperature=None, top_p=None, top_k=None)
    if sampling.temperature > 0:
        kwargs["logits_processor"] = LogitsProcessorList([SeededSampler(seeds, sampling.temperature, sampling.top_p)])
    return kwargs


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def plain_generation_config(checkpoint: Any, tokenizer: Any):
    """A `GenerationConfig` with only the checkpoint's special token ids and no decoding defaults.

    transformers fills every field a `generate` call leaves unset from `model.generation_config`
    (`GenerationMixin._prepare_generation_config`), so a checkpoint shipping `repetition_penalty`,
    `no_repeat_ngram_size`, `num_beams`, `min_new_tokens`, `top_k`/`top_p`/`temperature` ... would change
    our output beyond what we record. vLLM with explicit `SamplingParams` ignores those defaults
    (vllm/entrypoints/llm.py: `generate` uses `get_default_sampling_params()` only when given none)
    but stops at the checkpoint's EOS ids; so do we."""
    from transformers import GenerationConfig

    eos = stop_token_ids(checkpoint, tokenizer)
    return GenerationConfig(eos_token_id=eos[0] if len(eos) == 1 else eos or None,
                            bos_token_id=getattr(checkpoint, "bos_token_id", None),
                            pad_token_id=tokenizer.pad_token_id)


def stop_token_ids(generation_config: Any, tokenizer: Any) -> list[int]:
    """The tokenizer's EOS, then the generation config's EOS ids (vLLM stops on both: the renderer's
    EOS and `update_from_generation_config`, vllm/sampling_params.py)."""
    out: list[int] = []
    for t in _ids(getattr(tokenizer, "eos_token_id", None)) + _ids(getattr(generation_config, "eos_token_id", None)):
        if t not in out:
            out.append(t)
    return out


def new_token_count(row: Sequence[int], stop_ids: Sequence[int]) -> int:
    """Tokens generated before the stop token (the padding of a finished row comes after it): what the
    vLLM backend counts too."""
    stops = set(stop_ids)
    for i, t in enumerate(row):
        if t in stops:
            return i
    return len(row)


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


def make_backend(preset_name: str, preset: ModelPreset, adapter: str | Path | None = None, *,
                 serves: Sequence[str | Path] = ()):
    """Build the preset's backend: transformers, vllm or openai (`reflectevo.backends.make_backend`)."""
    from reflectevo.backends import make_backend as build

    return build(preset_name, preset, adapter=adapter, serves=serves)
