"""A decode step's grouped attention equals attention over K/V repeated per query head.

The reference is computed here in float64 from the inputs: each query head h reads K/V head
h // groups (transformers' ``repeat_kv`` order), scores scaled, the mask added (or applied),
softmax, times V. The engine's answers with the packed path equal its answers with it off.
"""

from __future__ import annotations

import pytest
import torch

from engine.chat.generate import release, run_rows
from engine.model import decode_attention
from engine.model.decode_attention import packed


def by_hand(q, k, v, mask, scale):
    b, h, _, d = q.shape
    groups = h // k.shape[1]
    out = torch.empty(b, 1, h, v.shape[-1], dtype=torch.float64)
    for i in range(b):
        for head in range(h):
            kk, vv = k[i, head // groups].double(), v[i, head // groups].double()
            s = (kk @ q[i, head, 0].double()) * scale
            if mask is not None:
                m = mask[min(i, mask.shape[0] - 1), 0, 0]
                s = s.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else s + m.double()
            out[i, 0, head] = torch.softmax(s, -1) @ vv
    return out


def _mask(batch, length, starts, upto, kind):
    valid = torch.zeros(batch, length, dtype=torch.bool)
    for i, s in enumerate(starts):
        valid[i, s:upto] = True
    if kind == "bool":
        return valid[:, None, None, :]
    return torch.where(valid, 0.0, torch.finfo(torch.float32).min)[:, None, None, :]


@pytest.mark.parametrize("heads,kv", [(4, 2), (8, 2), (8, 1), (6, 3)])
@pytest.mark.parametrize("kind", ["additive", "bool", "none", "one row for all"])
def test_packed_equals_repeated_heads_by_hand(heads, kv, kind):
    g = torch.Generator().manual_seed(heads * 10 + kv)
    b, length, d = 3, 24, 16
    q = torch.randn(b, heads, 1, d, generator=g)
    k = torch.randn(b, kv, length, d, generator=g)
    v = torch.randn(b, kv, length, d, generator=g)
    mask = None
    if kind in ("additive", "bool"):
        mask = _mask(b, length, [0, 5, 11], 17, kind)  # left padding, slots past the step unseen
    elif kind == "one row for all":
        mask = _mask(1, length, [3], 20, "additive")
    out, weights = packed(None, q, k, v, mask, 0.0, d**-0.5)
    assert weights is None and out.shape == (b, 1, heads, d) and out.is_contiguous()
    torch.testing.assert_close(out.double(), by_hand(q, k, v, mask, d**-0.5), rtol=1e-5, atol=1e-5)


def test_left_to_the_wrapped_function_where_it_does_not_apply(monkeypatch):
    q, k, v = torch.randn(2, 4, 1, 8), torch.randn(2, 2, 10, 8), torch.randn(2, 2, 10, 8)
    head_mask = torch.zeros(2, 4, 1, 10)
    assert packed(None, torch.randn(2, 4, 3, 8), k, v, None) is None  # a prompt, not one token
    assert packed(None, q, torch.randn(2, 4, 10, 8), torch.randn(2, 4, 10, 8), None) is None  # no groups
    assert packed(None, q, k, v, head_mask) is None  # a mask per head
    assert packed(None, q, k, v, None, dropout=0.1) is None
    assert packed(None, q, k, v, None, softcap=30.0) is None
    monkeypatch.setenv(decode_attention.ENV, "off")
    assert packed(None, q, k, v, None) is None


def test_installed_once_in_front_of_sdpa():
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    decode_attention.install()
    first = ALL_ATTENTION_FUNCTIONS["sdpa"]
    decode_attention.install()
    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is first
    assert not hasattr(first.leviathan_wraps, "leviathan_wraps")  # wrapped once, not twice


@pytest.mark.parametrize("arch", ["qwen3", "qwen3_vl"])
def test_engine_answers_the_same_with_the_cache_repeated(tiny_model, arch, monkeypatch):
    from engine.model.loading import load_for_inference

    loaded = load_for_inference(str(tiny_model(arch)), device="cpu")
    model, tok = loaded.model, loaded.tokenizer
    assert (
        model.config.get_text_config().num_key_value_heads
        < model.config.get_text_config().num_attention_heads
    )
    rows = [tok.encode("Who are you? " * n) for n in (1, 4, 2)]
    taken = []

    def counting(*a, **kw):
        out = packed(*a, **kw)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(decode_attention, "packed", counting)
    grouped = run_rows(model, rows, max_new_tokens=10, stop_ids=set(), pad_id=0)
    assert any(taken), "no decode step took the grouped path"
    release(model)
    monkeypatch.setenv(decode_attention.ENV, "off")
    repeated = run_rows(model, rows, max_new_tokens=10, stop_ids=set(), pad_id=0)
    release(model)
    assert grouped.tokens == repeated.tokens
