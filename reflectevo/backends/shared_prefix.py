"""Attention over a prompt head that every row of a batch shares, kept once instead of once per row.

The prompts of one phase and task start with the same tokens (system prompt, few-shot block, template
head: about 450 of a ~700-token trial-2 prompt in the default run). Copying that head's KV cache into
every row makes each decode step read and re-concatenate it 64 times; on a CPU that memory traffic,
not the matrix products, dominated decoding (`torch.cat` in the cache update and the cache copies when
a finished row leaves the batch: about 35% of a decode step's time, measured with py-spy).

Here the head's keys and values are computed once (batch 1) and handed to every attention call as
`shared_prefix`; the regular KV cache holds only each row's own tokens. Attention is the softmax over
the concatenation [head; own], computed as two blocks merged exactly (max-shifted exponentials): the
head block is a single batched matrix product over all rows per KV head, the own block is masked as
usual (padding, causality). Numerically this is the same attention as SDPA over the full rows, up to
float rounding (scores and softmax in float32).

Registered with transformers' `AttentionInterface` under `NAME`; a call without `shared_prefix` (and
every training forward) goes to transformers' own SDPA unchanged. Only models whose attention goes
through that interface with plain softmax attention use it (`supported`).
"""

from __future__ import annotations

from typing import Any

NAME = "reflectevo_shared_prefix"
_CHUNK_ELEMENTS = 1 << 24     # score elements per block of rows (64 MB in float32) during a long prefill


def supported(model: Any) -> bool:
    """True when the model runs transformers' SDPA attention through `AttentionInterface`, without the
    extras (soft-capping, sliding windows, attention sinks) that the merge here does not implement."""
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "_attn_implementation", None) not in ("sdpa", NAME):
        return False
    if getattr(cfg, "attn_logit_softcapping", None) or getattr(cfg, "sliding_window", None):
        return False
    return getattr(model, "_can_set_attn_implementation", lambda: False)()


def install(model: Any) -> bool:
    """Switch `model` to the shared-prefix attention (falls back to SDPA whenever no prefix is given).
    Returns False, changing nothing, when the model is not `supported`."""
    if not supported(model):
        return False
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, shared_prefix_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
    return True


def prefix_kv(cache: Any) -> list[tuple[Any, Any]]:
    """Per layer (keys, values) of a batch-1 cache, as [kv_heads, length, head_dim]."""
    return [(layer.keys[0], layer.values[0]) for layer in cache.layers]


def shared_prefix_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                            dropout: float = 0.0, scaling: float | None = None,
                            shared_prefix: list[tuple[Any, Any]] | None = None, **kwargs: Any):
    """transformers attention function: query [B, Hq, T, D], key/value [B, Hkv, L, D] (the rows' own
    tokens), mask [B, 1, T, L] (bool: True = attend) or None; returns ([B, T, Hq, D], None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if shared_prefix is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    import torch

    pk, pv = shared_prefix[module.layer_idx]
    b, hq, t, d = query.shape
    scale = scaling if scaling is not None else d ** -0.5
    if t > 1:
        return _prefill(query, key, value, attention_mask, pk, pv, scale), None
    per_row = hq * t * (pk.shape[1] + key.shape[2])
    step = max(1, _CHUNK_ELEMENTS // max(1, per_row))
    outs = [_merge(query[i:i + step], key[i:i + step], value[i:i + step],
                   None if attention_mask is None else attention_mask[i:i + step], pk, pv, scale)
            for i in range(0, b, step)]
    out = outs[0] if len(outs) == 1 else torch.cat(outs)
    return out.to(query.dtype).transpose(1, 2).contiguous(), None


def _prefill(query, key, value, mask, pk, pv, scale):
    """Several query positions per row (the rows' own prompt tokens): SDPA over the prefix (a broadcast
    view, no copy until SDPA needs one) and the own tokens, once per batch; [B, T, Hq, D]."""
    import torch

    b, hq, t, d = query.shape
    length = key.shape[2]
    keys = torch.cat([pk.unsqueeze(0).expand(b, -1, -1, -1), key], dim=2)
    values = torch.cat([pv.unsqueeze(0).expand(b, -1, -1, -1), value], dim=2)
    if mask is None:   # causal over the own tokens: query i (of the last t) sees own positions <= length - t + i
        own = torch.ones(t, length, dtype=torch.bool, device=query.device).tril(length - t).expand(b, 1, t, length)
    else:
        own = mask[:, :, :, -length:]
        own = own if own.dtype == torch.bool else own == 0
    full = torch.cat([own.new_ones((b, 1, t, pk.shape[1])), own], dim=3)
    out = torch.nn.functional.scaled_dot_product_attention(query, keys.to(query.dtype), values.to(query.dtype),
                                                           attn_mask=full, scale=scale,
                                                           enable_gqa=keys.shape[1] != query.shape[1])
    return out.transpose(1, 2).contiguous()


def _merge(query, key, value, mask, pk, pv, scale):
    """One query position per row (a decode step): the exact softmax over [prefix; own] as two blocks,
    the prefix block one matrix product per kv head for all rows; [B, Hq, T, D] in float32."""
    import torch

    b, hq, t, d = query.shape
    hkv, p = pk.shape[0], pk.shape[1]
    g = hq // hkv
    length = key.shape[2]
    q = query.float().reshape(b, hkv, g * t, d)                    # head h uses kv head h // g
    # prefix block: one matrix product per kv head over every row and query position
    s1 = torch.bmm(q.permute(1, 0, 2, 3).reshape(hkv, b * g * t, d), pk.float().transpose(1, 2)) * scale
    s1 = s1.view(hkv, b, g * t, p).permute(1, 0, 2, 3)            # [B, Hkv, gT, P]
    s2 = torch.matmul(q, key.float().transpose(-1, -2)) * scale     # [B, Hkv, gT, L]
    if mask is None:
        if t > 1:   # causal over the own tokens: query i (of the last t) sees own positions <= length - t + i
            allowed = torch.ones(t, length, dtype=torch.bool, device=q.device).tril(length - t)
            s2 = s2.masked_fill(~allowed.repeat(g, 1), float("-inf"))
    else:
        m = mask[:, :, :, -length:]
        m = m.unsqueeze(2).expand(b, m.shape[1], g, t, length).reshape(b, m.shape[1], g * t, length)
        s2 = s2.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else s2 + m.float()
    top = torch.maximum(s1.amax(-1), s2.amax(-1)).unsqueeze(-1)  # the prefix block is never fully masked
    e1, e2 = (s1 - top).exp(), (s2 - top).exp()
    den = e1.sum(-1, keepdim=True) + e2.sum(-1, keepdim=True)
    o1 = torch.bmm(e1.permute(1, 0, 2, 3).reshape(hkv, b * g * t, p), pv.float())
    o1 = o1.view(hkv, b, g * t, d).permute(1, 0, 2, 3)
    o2 = torch.matmul(e2, value.float())
    return ((o1 + o2) / den).reshape(b, hq, t, d)
