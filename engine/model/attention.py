"""Attention over packed documents without a dense mask.

TRL's padding-free collator flattens a micro-batch of packed rows into one sequence and
hands the model ``cu_seq_lens_q/k`` (document boundaries) and ``max_length_q/k``.
Transformers' ``sdpa`` turns those packed position ids into a dense [T, T]
block-diagonal mask, which keeps SDPA off its flash kernel. This attention function takes
the boundaries instead:

- on CUDA, ``torch.nn.attention.varlen.varlen_attn`` (PyTorch's flash kernel for variable
  lengths; no mask at all);
- elsewhere, exact causal SDPA per document (a loop; CPU runs are tiny).

Without boundaries (generation, unpacked batches) it is plain SDPA (a decode step's grouped
query heads without repeating the cache: ``engine.model.decode_attention``). Documents never
attend to each other, so packed losses equal unpacked ones.

Its masks are flash attention's (a padding mask or none), so transformers' scan of packed
position ids for a document mask is thrown away; it also ends in a host sync (``.all()``) at
the top of every training forward, which drains the GPU's queue: ``_no_packed_scan`` skips it
for this attention only.
"""

from __future__ import annotations

import functools
import inspect

import torch

from engine.model.decode_attention import packed

NAME = "leviathan_varlen"
_registered = False


def _varlen_call():
    """PyTorch's varlen entry point and how to ask it for causal, GQA attention."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None, set()
    return varlen_attn, set(inspect.signature(varlen_attn).parameters)


_VARLEN, _VARLEN_PARAMS = _varlen_call()


def _per_document(q, k, v, cu, scaling, groups):
    # q, k, v: [heads, T, dim]; exact causal attention inside each document.
    out = torch.empty_like(q)
    bounds = cu.tolist()
    for s, e in zip(bounds[:-1], bounds[1:], strict=True):
        if e <= s:
            continue
        out[:, s:e] = torch.nn.functional.scaled_dot_product_attention(
            q[:, s:e], k[:, s:e], v[:, s:e], is_causal=True, scale=scaling, enable_gqa=groups > 1
        )
    return out


def _flash_varlen(q, k, v, cu, max_len, scaling, groups):
    # q, k, v: [T, heads, dim] for the kernel.
    kwargs = {}
    if "window_size" in _VARLEN_PARAMS:
        kwargs["window_size"] = (-1, 0)
    else:
        kwargs["is_causal"] = True
    if "scale" in _VARLEN_PARAMS:
        kwargs["scale"] = scaling
    if groups > 1 and "enable_gqa" in _VARLEN_PARAMS:
        kwargs["enable_gqa"] = True
    # Older releases have no flag but their flash kernel takes fewer K/V heads as they are
    # (checked on torch 2.11 / H100: identical to repeated K/V, benchmarks/gqa_check.py).
    cu = cu.to(device=q.device, dtype=torch.int32)
    return _VARLEN(q, k, v, cu, cu, max_len, max_len, **kwargs)


def varlen_attention_forward(
    module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs
):
    """The transformers attention interface: [B, H, T, D] in, [B, T, H, D] out."""
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None or query.shape[0] != 1 or query.shape[2] != key.shape[2]:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        if attention_mask is not None and attention_mask.dim() == 2:
            attention_mask = _causal_padding_mask(attention_mask.bool(), query.shape[2])
        out = packed(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
        if out is not None:  # a decode step: grouped query heads, the cache not repeated
            return out
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    groups = query.shape[1] // key.shape[1]
    q, k, v = query[0], key[0], value[0]  # [H, T, D]
    if q.is_cuda and _VARLEN is not None:
        max_len = kwargs.get("max_length_q") or int((cu[1:] - cu[:-1]).max())
        # The flash kernel is half precision only; an fp32 residual stream (some QLoRA setups) is cast.
        half = q.dtype if q.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
        out = _flash_varlen(
            *(t.transpose(0, 1).to(half) for t in (q, k, v)), cu, int(max_len), scaling, groups
        )
        return out.to(q.dtype).unsqueeze(0), None  # [1, T, H, D]
    out = _per_document(q, k, v, cu, scaling, groups)
    return out.transpose(0, 1).unsqueeze(0).contiguous(), None


def _causal_padding_mask(padding, q_len):
    # The flash-style mask interface hands over a [B, kv] padding mask; SDPA wants [B, 1, q, kv].
    kv_len = padding.shape[1]
    rows = torch.arange(kv_len - q_len, kv_len, device=padding.device)[:, None]
    causal = torch.arange(kv_len, device=padding.device)[None, :] <= rows
    return causal[None, None] & padding[:, None, None, :]


def register() -> str:
    """Make ``attn_implementation="leviathan_varlen"`` known to transformers; returns the name."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

        AttentionInterface.register(NAME, varlen_attention_forward)
        # Like flash attention: no dense mask is built; padding-only masks pass through.
        AttentionMaskInterface.register(NAME, flash_attention_mask)
        _no_packed_scan()
        _registered = True
    return NAME


def _no_packed_scan() -> None:
    """transformers' mask preparation, minus the packed-document scan for this attention.

    ``_preprocess_mask_arguments(config, inputs_embeds, attention_mask, cache, position_ids,
    ...)`` reads ``position_ids`` only to find packed documents (``find_packed_sequence_indices``),
    whose result only a dense mask would use; ``flash_attention_mask`` ignores it. Other
    attentions keep the scan. tests/test_upstream_canary.py checks the signature."""
    from transformers import masking_utils

    original = masking_utils._preprocess_mask_arguments
    if getattr(original, "_leviathan", False):
        return

    @functools.wraps(original)
    def preprocess(config, inputs_embeds, attention_mask, *args, **kwargs):
        if getattr(config, "_attn_implementation", None) == NAME:
            if len(args) >= 2:
                args = (args[0], None, *args[2:])
            elif "position_ids" in kwargs:
                kwargs["position_ids"] = None
        return original(config, inputs_embeds, attention_mask, *args, **kwargs)

    preprocess._leviathan = True
    masking_utils._preprocess_mask_arguments = preprocess
