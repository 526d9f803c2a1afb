"""One query token against a K/V cache with fewer heads than queries, without repeating the cache.

A decode step's attention in transformers' ``sdpa`` (up to 5.2x) repeats every layer's cached
keys and values to the query heads (``repeat_kv``) whenever a mask is passed, and the engine
always passes one (its left-padded rows). For an 8B-shaped Qwen3 (8 K/V heads, 32 query heads)
at the identity suite's batch 5 and a 512-token cache, that is ~1.5 GB written and read again a
step, beside ~16 GB of weights. A single query token needs no copy: its ``groups`` query heads
that share a K/V head are laid out as that head's ``groups`` query rows, and one SDPA call over
the cache as it is gives the same attention (the rows' softmax never mixes). Newer transformers
do the same (``pack_gqa``); this keeps the engine's decode independent of the version.

``install()`` puts the packed path in front of transformers' ``sdpa`` for the whole process;
anything else (a prompt, no grouping, a per-head mask, dropout, softcapping, sinks) goes to the
function it wraps unchanged. ``LEVIATHAN_DECODE_GQA=off`` turns it off (the A/B in
benchmarks/decode_profile.py).
"""

from __future__ import annotations

import os

import torch

ENV = "LEVIATHAN_DECODE_GQA"
_EXTRAS = ("softcap", "position_bias", "s_aux", "sinks", "sliding_window")


def packed(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """The attention of one query token per row over the whole cache, grouped; None where it
    does not apply (the caller's function answers). Shapes: query [B, H, 1, D], key and value
    [B, KV, L, D], mask [B or 1, 1, 1, L] (bool or additive) or None; out [B, 1, H, D]."""
    batch, heads, q_len, dim = query.shape
    kv_heads = key.shape[1]
    if q_len != 1 or kv_heads == heads or heads % kv_heads or value.shape[1] != kv_heads:
        return None
    if dropout or any(kwargs.get(k) is not None for k in _EXTRAS) or os.environ.get(ENV) == "off":
        return None
    if attention_mask is not None and (attention_mask.dim() != 4 or attention_mask.shape[1:3] != (1, 1)):
        return None
    if key.shape[0] != batch:
        return None
    # [B, H, 1, D] -> [B, KV, groups, D]: a K/V head's query heads are adjacent (repeat_kv's order).
    q = query.reshape(batch, kv_heads, heads // kv_heads, dim)
    out = torch.nn.functional.scaled_dot_product_attention(
        q, key, value, attn_mask=attention_mask, scale=scaling
    )
    return out.reshape(batch, heads, 1, value.shape[-1]).transpose(1, 2).contiguous(), None


def _in_front_of(fn):
    def attend(module, query, key, value, attention_mask, *args, **kwargs):
        dropout = args[0] if args else kwargs.get("dropout", 0.0)
        scaling = args[1] if len(args) > 1 else kwargs.get("scaling")
        rest = {k: v for k, v in kwargs.items() if k not in ("dropout", "scaling")}
        out = packed(module, query, key, value, attention_mask, dropout, scaling, **rest)
        return out if out is not None else fn(module, query, key, value, attention_mask, *args, **kwargs)

    attend.leviathan_wraps = fn
    return attend


def install() -> None:
    """Put the packed path in front of transformers' ``sdpa`` (once per process)."""
    from transformers import AttentionInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    current = ALL_ATTENTION_FUNCTIONS["sdpa"]
    if not hasattr(current, "leviathan_wraps"):
        AttentionInterface.register("sdpa", _in_front_of(current))
