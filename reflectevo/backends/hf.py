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

import contextlib
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reflectevo.sampling import Generation, Sampling, finish_text, prompt_seeds, stop_position
from reflectevo.config.presets import ModelPreset

# How sampled tokens are drawn (part of every episode key, = reflectevo.generation.SAMPLER): one seed per
# sample, one random generator per row, inverse-CDF draw (`SeededSampler`; v1 drew with torch.multinomial).
SAMPLER = "per-sample-seed-v2"


class TransformersBackend:
    name = "transformers"
    sampler = SAMPLER
    # `progress(finished, tokens)`, when set, is called after each batch's prefill (its prompt tokens computed) and
    # at every decoding step (rows that ended, tokens drawn); reflectevo.progress.Metered sets it for a call
    reports_progress = True
    progress = None

    def __init__(self, preset_name: str, preset: ModelPreset, adapter: str | Path | None = None,
                 batch_size: int | None = None) -> None:
        import torch

        from reflectevo.models.load import load_model, load_tokenizer

        torch.set_num_threads(max(1, torch.get_num_threads()))
        self.tokenizer = load_tokenizer(preset_name, preset)
        self.tokenizer.padding_side = "left"
        self.model = load_model(preset_name, preset, adapter=adapter)
        self.model.generation_config = plain_generation_config(self.model.generation_config, self.tokenizer)
        from reflectevo.backends import shared_prefix

        # a batch's shared prompt head is kept once, not copied into every row (reflectevo/backends/shared_prefix.py)
        # on a CPU the memory traffic of per-row prefix copies dominates decoding; a GPU runs the model's own
        # (fused) attention over the copied prefix cache instead
        self.cascade = shared_prefix.install(self.model) if self.model.device.type == "cpu" else False
        self.sync = None
        self.stop_ids = stop_token_ids(self.model.generation_config, self.tokenizer)
        self.batch_size = batch_size or preset.gen_batch_size
        self.prefilled_tokens = 0   # prompt tokens actually computed (a shared prefix counts once per batch)
        self.dtype = str(self.model.dtype).replace("torch.", "")

    @classmethod
    def around(cls, model: Any, tokenizer: Any, stop_ids: Sequence[int], batch_size: int = 8, *,
               sync: ForwardSync | None = None) -> TransformersBackend:
        """A backend on a model that is already loaded (the live policy inside an RL rollout): nothing is
        loaded or installed (no shared-prefix attention: the model trains between calls), generation stops at
        `stop_ids`. The caller puts the model in eval mode.

        `sync`: the model is sharded over the ranks (FSDP, DeepSpeed ZeRO-3), so each of its forwards is a
        collective; every forward is then announced to the other ranks (`ForwardSync`), and a rank whose rows
        have all ended keeps stepping with them until every rank is done. Get it from `synced_forwards(model)`
        (None where the model is not sharded)."""
        self = cls.__new__(cls)
        self.tokenizer, self.model, self.cascade = tokenizer, model, False
        self.stop_ids, self.batch_size, self.prefilled_tokens = list(stop_ids), batch_size, 0
        self.dtype = str(getattr(model, "dtype", "")).replace("torch.", "")
        self.sync = sync
        return self

    @staticmethod
    def resolved_dtype(preset: ModelPreset) -> str:
        """The dtype name this backend loads the preset in (`reflectevo.models.load.resolve_dtype`)."""
        from reflectevo.models.load import resolve_dtype

        return str(resolve_dtype(preset.dtype)).replace("torch.", "")

    def _forward(self, **kwargs: Any):
        """One forward of the model; announced first when it is sharded (see `ForwardSync`)."""
        if self.sync is not None:
            self.sync.before_forward()
        return self.model(**kwargs)

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
        """Prefill the left-padded batch once, then decode token by token; a row leaves the running batch
        (and the KV cache) as soon as it ends: EOS, a stop (`stop_position` on its decoded text), or the
        budget. Greedy, or sampled per row by `SeededSampler`; nothing else from the checkpoint's
        `generation_config` applies (no repetition penalty, no default top-k/top-p/temperature), so
        every backend generates from exactly the recorded sampling parameters."""
        import torch
        from transformers import DynamicCache

        rows = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        n_prompt = [len(r) for r in rows]
        eos = set(self.stop_ids)
        stops = bool(sampling.stop or sampling.stop_regex or sampling.stop_patterns)
        sampler = SeededSampler(seeds, sampling.temperature, sampling.top_p) if sampling.temperature > 0 else None
        alive = list(range(len(prompts)))                 # original row of each running row
        new: list[list[int]] = [[] for _ in prompts]
        reason = ["length"] * len(prompts)
        cache = DynamicCache()
        with torch.inference_mode(), warnings.catch_warnings():
            # transformers >= 5.2x renames the forward's `past_key_values` to `cache`; the vllm extra's
            # transformers (< 5.21) has only the old name, which both accept
            warnings.filterwarnings("ignore", message=".*past_key_values.*deprecated", category=FutureWarning)
            prefilled = self.prefilled_tokens
            out, mask, pos, extra = self._prefill(rows, cache)
            if self.progress is not None:
                self.progress(0, self.prefilled_tokens - prefilled)
            last_pos = pos[:, -1]
            for _ in range(sampling.max_new_tokens):
                scores = out.logits[:, -1, :]
                if sampler is not None:
                    scores = sampler(None, scores)
                nxt = scores.argmax(dim=-1)
                keep = []
                tokens = nxt.tolist()
                for j, (row, tok) in enumerate(zip(alive, tokens)):
                    if tok in eos:
                        reason[row] = "eos"
                        continue
                    new[row].append(tok)
                    if len(new[row]) >= sampling.max_new_tokens:
                        continue
                    keep.append(j)
                if stops and keep:
                    texts = self.tokenizer.batch_decode([new[alive[j]] for j in keep], skip_special_tokens=True)
                    keep = [j for j, t in zip(keep, texts) if stop_position(t, sampling) is None]
                if self.progress is not None:
                    self.progress(len(alive) - len(keep), len(alive))
                if not keep:
                    break
                if len(keep) < len(alive):
                    index = torch.tensor(keep, device=mask.device)
                    cache.batch_select_indices(index)
                    mask, nxt, last_pos = mask[index], nxt[index], last_pos[index]
                    if sampler is not None:
                        sampler.generators = [sampler.generators[j] for j in keep]
                    alive = [alive[j] for j in keep]
                mask = torch.cat([mask, mask.new_ones((len(alive), 1))], dim=1)
                last_pos = last_pos + 1
                out = self._forward(input_ids=nxt.unsqueeze(1), attention_mask=mask, position_ids=last_pos.unsqueeze(1),
                                    past_key_values=cache, use_cache=True, **extra)
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        results = []
        for t, p, toks, why in zip(texts, n_prompt, new, reason):
            text, r = finish_text(t, sampling, why)
            results.append(Generation(text, int(p), len(toks), r))
        return results

    def score(self, prompts: Sequence[str], continuations: Sequence[str]) -> list[float]:
        """Log-probability of each continuation after its prompt (sum over the continuation's tokens),
        teacher-forced, in batches: what the likelihood judge ranks reflections by. Rows are left-padded,
        so every continuation ends the row and only the last positions get logits; the prompts' shared
        head is computed once per batch (as in generation). Each row's log-probabilities are taken from its own
        logits ([continuation, vocab] in float32, the target's logit minus the log-sum-exp), never from a float32
        copy of the whole batch's [rows, positions, vocab]."""
        import torch
        from transformers import DynamicCache

        out: list[float] = []
        for start in range(0, len(prompts), self.batch_size):
            ps = self.tokenizer(list(prompts[start:start + self.batch_size]), add_special_tokens=False)["input_ids"]
            cs = self.tokenizer(list(continuations[start:start + self.batch_size]), add_special_tokens=False)["input_ids"]
            rows = [p + c for p, c in zip(ps, cs)]
            keep = max(len(c) for c in cs) + 1
            with torch.inference_mode(), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*past_key_values.*deprecated", category=FutureWarning)
                res, _, _, _ = self._prefill(rows, DynamicCache(), logits_to_keep=keep)
            logits = res.logits                                 # [rows, keep, vocab]: the last `keep` positions
            for row, c in enumerate(cs):
                # position keep-1-len(c)+i predicts continuation token i
                lg = logits[row, keep - 1 - len(c):keep - 1].float()
                target = torch.tensor(c, device=lg.device).unsqueeze(1)
                out.append(float((lg.gather(1, target).squeeze(1) - lg.logsumexp(-1)).sum()))
        return out

    def _prefill(self, rows: list[list[int]], cache, logits_to_keep: int = 1):
        """Run the prompts through the model into `cache`: (last-position output, attention mask, position
        ids, extra forward kwargs for the decode steps). The tokens every prompt of the batch starts with
        (system prompt, few-shot block, template head: the prompts of one phase and task share them) are
        computed once. With the shared-prefix attention (`self.cascade`) they stay a single batch-1 block
        that every row attends to and `cache` holds only the rows' own tokens; otherwise the head's cache
        is copied per row. Each row's remaining tokens follow, left-padded, so the pads sit between the
        shared prefix and the row's own tokens (masked out; positions continue from the prefix)."""
        import torch
        from transformers import DynamicCache

        device = self.model.device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        shared = _common_prefix(rows) if len(rows) > 1 else 0
        # every row keeps at least `logits_to_keep` own tokens (the positions whose logits are returned)
        shared = max(0, min(shared, min(len(r) for r in rows) - logits_to_keep))
        if shared < PREFIX_MIN_TOKENS:
            shared = 0
        extra: dict[str, Any] = {}
        if shared:
            head = DynamicCache() if self.cascade else cache
            self._forward(input_ids=torch.tensor([rows[0][:shared]], device=device), past_key_values=head,
                          use_cache=True, logits_to_keep=1)
            if self.cascade:
                from reflectevo.backends.shared_prefix import prefix_kv

                extra["shared_prefix"] = prefix_kv(head)
            else:
                cache.batch_repeat_interleave(len(rows))
        tails = [r[shared:] for r in rows]
        width = max(len(t) for t in tails)
        ids = torch.tensor([[pad] * (width - len(t)) + t for t in tails], device=device)
        own = torch.tensor([[0] * (width - len(t)) + [1] * len(t) for t in tails], device=device)
        full = torch.cat([own.new_ones((len(rows), shared)), own], dim=1)
        pos = (full.long().cumsum(-1) - 1).clamp(min=0)[:, shared:]
        mask = own if extra else full
        self.prefilled_tokens += shared + sum(len(t) for t in tails)
        out = self._forward(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                            use_cache=True, logits_to_keep=logits_to_keep, **extra)
        return out, mask, pos, extra


class ForwardSync:
    """Lockstep forwards of a model sharded over the ranks (FSDP, DeepSpeed ZeRO-3), where every forward
    gathers the shards from every rank: a collective that hangs when one rank runs a forward the others do not.

    Our decode loop drops a row as soon as it ends, so ranks holding other prompts stop at different steps
    (and the trial mechanics make a different number of calls per rank). As transformers' `generate` does
    under `synced_gpus` (generation/utils.py `_has_unfinished_sequences`: an all-reduce of "still running"
    before each step), each forward is announced here with an all-reduce of 1; a rank with nothing left calls
    `drain`, which announces 0 and runs a one-token forward for as long as another rank announces work, and
    returns once every rank has drained. So all ranks run the same number of forwards, pairwise in step.

    Drain once per phase, inside the same adapter context as that phase's forwards (`synced_forwards` does it
    on leaving its block), and open the phases in the same order on every rank."""

    def __init__(self, model: Any, pad_id: int = 0, group: Any = None) -> None:
        self.model, self.pad_id, self.group = model, pad_id, group
        self.forwards = 0   # this rank's own forwards
        self.idle = 0       # forwards run only to keep step with the other ranks

    def _all_reduce(self, value: float) -> float:
        import torch
        import torch.distributed as dist

        flag = torch.tensor([value], dtype=torch.float32, device=self.model.device)
        dist.all_reduce(flag, op=dist.ReduceOp.SUM, group=self.group)
        return float(flag.item())

    def before_forward(self) -> None:
        self._all_reduce(1.0)
        self.forwards += 1

    def drain(self) -> None:
        import torch

        while self._all_reduce(0.0) > 0:
            with torch.inference_mode():
                self.model(input_ids=torch.tensor([[self.pad_id]], device=self.model.device), use_cache=False)
            self.idle += 1


def needs_synced_forwards(model: Any) -> bool:
    """True when a forward of `model` is a collective: more than one process, and the model's weights sharded
    by FSDP (1 or 2: an FSDP module in it) or partitioned by DeepSpeed ZeRO-3 (its parameters carry `ds_id`),
    transformers' own test for `synced_gpus` (generation/utils.py) made per model, so a whole replica beside a
    sharded policy (`reflectevo.training.model.frozen_base`) is not synced."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return False
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

    if any(isinstance(m, (FSDPModule, FullyShardedDataParallel)) for m in model.modules()):
        return True
    return any(hasattr(p, "ds_id") for p in model.parameters())


@contextlib.contextmanager
def synced_forwards(model: Any, pad_id: int | None = 0, enabled: bool | None = None):
    """`with synced_forwards(model) as sync:` ... `TransformersBackend.around(model, ..., sync=sync)` ...: a
    `ForwardSync` where `model` is sharded (`needs_synced_forwards`, or `enabled`), else None; on leaving the
    block this rank drains (keeps step until every rank has left its block). Use one block per phase and
    model (e.g. the reflections with the adapter on, then the retries with it off), the same on every rank."""
    on = needs_synced_forwards(model) if enabled is None else enabled
    sync = ForwardSync(model, pad_id or 0) if on else None
    try:
        yield sync
    finally:
        if sync is not None:
            sync.drain()


PREFIX_MIN_TOKENS = 16   # a shared prompt prefix shorter than this is not worth a separate pass


def _common_prefix(rows: list[list[int]]) -> int:
    first = rows[0]
    n = min(len(r) for r in rows)
    for r in rows[1:]:
        k = 0
        while k < n and r[k] == first[k]:
            k += 1
        n = k
    return n


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
        # the draw runs where the logits are; only the rows' uniform numbers come from their (CPU) generators, so a
        # row's stream is the same on every device and no [rows, vocab] tensor leaves the GPU
        cdf = logits.softmax(dim=-1).cumsum(dim=-1)
        u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in self.generators])
        # first index whose cumulative mass exceeds u * total: a token with non-zero probability
        u = u.to(device=cdf.device, dtype=cdf.dtype)
        picks = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1), right=True).squeeze(1)
        picks = picks.clamp_(max=cdf.shape[1] - 1)
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(len(picks), device=scores.device), picks] = 0.0
        return out
