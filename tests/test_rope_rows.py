"""RoPE with the batch folded into the sequence equals RoPE per batch row, and the kernel behind
it sees batch 1 whatever the batch.

The rotation is transformers' own ``apply_rotary_pos_emb`` (what Liger's kernel computes), fed
each row's cos/sin from transformers' rotary embedding at left-padded positions.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch
from transformers.models.qwen3 import modeling_qwen3

from engine.model import rope_rows


def _rope_like_liger(seen):
    def fn(q, k, cos, sin, position_ids=None, unsqueeze_dim=1):
        seen.append((q.shape[0], cos.shape[0]))
        return modeling_qwen3.apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim)

    return fn


def _inputs(b, s, heads=4, kv=2, dim=16, shared=False):
    g = torch.Generator().manual_seed(b * 100 + s)
    # As an attention layer makes them: transposed views of [B, S, H, D] tensors.
    q = torch.randn(b, s, heads, dim, generator=g).transpose(1, 2)
    k = torch.randn(b, s, kv, dim, generator=g).transpose(1, 2)
    cfg = modeling_qwen3.Qwen3Config(head_dim=dim, num_attention_heads=heads, hidden_size=heads * dim)
    rotary = modeling_qwen3.Qwen3RotaryEmbedding(cfg)
    starts = torch.arange(b) * 3  # left padding: each row's positions start elsewhere
    pos = (torch.arange(s)[None] + starts[:, None]) if not shared else torch.arange(s)[None]
    cos, sin = rotary(q, pos)
    return q, k, cos, sin


@pytest.mark.parametrize("b,s", [(5, 1), (2, 7), (8, 16), (3, 1)])
@pytest.mark.parametrize("shared", [False, True])
def test_folded_equals_per_row(b, s, shared):
    q, k, cos, sin = _inputs(b, s, shared=shared)
    want_q, want_k = modeling_qwen3.apply_rotary_pos_emb(q.clone(), k.clone(), cos, sin)
    seen = []
    with torch.no_grad():
        got_q, got_k = rope_rows._folded(_rope_like_liger(seen))(q, k, cos, sin)
    assert seen == [(1, 1)]  # one row of batch for the kernel, whatever b
    assert got_q.shape == q.shape and got_k.shape == k.shape
    torch.testing.assert_close(got_q, want_q, rtol=0, atol=1e-6)
    torch.testing.assert_close(got_k, want_k, rtol=0, atol=1e-6)


def test_left_as_it_is_with_autograd_batch_one_or_switched_off(monkeypatch):
    seen = []
    fn = rope_rows._folded(_rope_like_liger(seen))
    q, k, cos, sin = _inputs(3, 4)
    fn(q, k, cos, sin)  # grad enabled: training's call
    with torch.no_grad():
        fn(*_inputs(1, 4))
        monkeypatch.setenv(rope_rows.ENV, "off")
        fn(q, k, cos, sin)
    assert seen == [(3, 3), (1, 1), (3, 3)]


def test_install_wraps_the_modules_that_call_liger_s_rope(monkeypatch):
    def liger_rotary_pos_emb(q, k, cos, sin, position_ids=None, unsqueeze_dim=1):
        return q, k

    liger = types.ModuleType("liger_kernel.transformers.rope")
    liger.liger_rotary_pos_emb = liger_rotary_pos_emb
    patched = types.ModuleType("transformers.models.fake.modeling_fake")
    patched.apply_rotary_pos_emb = liger_rotary_pos_emb
    untouched = types.ModuleType("transformers.models.other.modeling_other")
    untouched.apply_rotary_pos_emb = modeling_qwen3.apply_rotary_pos_emb
    for m in (liger, patched, untouched):
        monkeypatch.setitem(sys.modules, m.__name__, m)
    assert rope_rows.install() == 1
    assert patched.apply_rotary_pos_emb.leviathan_wraps is liger_rotary_pos_emb
    assert untouched.apply_rotary_pos_emb is modeling_qwen3.apply_rotary_pos_emb
    again = patched.apply_rotary_pos_emb
    assert rope_rows.install() == 1 and patched.apply_rotary_pos_emb is again  # once


def test_install_never_asks_a_lazy_module_for_an_attribute(monkeypatch):
    # transformers 5.17 puts `models.X.image_processing_X_fast` aliases in sys.modules whose
    # module __getattr__ imports the model's image processor (torchvision, timm...): asking each
    # of them cost 2.97 s in an H100 probe, and raises where torchvision is not installed.
    asked = []

    def liger_rotary_pos_emb(q, k, cos, sin, position_ids=None, unsqueeze_dim=1):
        return q, k

    def forwards(name):
        asked.append(name)
        raise ModuleNotFoundError("No module named 'torchvision'")

    liger = types.ModuleType("liger_kernel.transformers.rope")
    liger.liger_rotary_pos_emb = liger_rotary_pos_emb
    alias = types.ModuleType("transformers.models.fake.image_processing_fake_fast")
    alias.__getattr__ = forwards
    for m in (liger, alias):
        monkeypatch.setitem(sys.modules, m.__name__, m)
    before = set(sys.modules)
    assert rope_rows.install() == 0
    assert asked == [] and set(sys.modules) == before
