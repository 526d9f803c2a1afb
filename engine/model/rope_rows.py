"""Liger's RoPE kernel called with the batch folded into the sequence: one compiled kernel for
every batch size.

Liger's kernel takes the batch size as a compile-time constant (``bs``, ``cos_bs``), so each
new batch size a decode sees (a chat's 1, the identity suite's 5, a suite's last short batch)
compiles it again: twice (the prompt, then the steps), a fraction of a second each on a machine
whose Triton cache is empty, inside the first probe or the first answer. Rows of a
[batch, seq, heads, dim] tensor are independent positions; with each row's cos/sin beside it,
[1, batch x seq] gives the same rotation, and the kernel sees batch 1 and a sequence length
(specialized only as 1, a multiple of 16 or other): the variants training already compiled,
or at most two more.

Only without autograd (training calls Liger's function as it is) and for the layouts Liger's own
shapes describe; anything else goes to Liger unchanged. ``LEVIATHAN_ROPE_ROWS=off`` turns it off.
"""

from __future__ import annotations

import os
import sys

import torch

ENV = "LEVIATHAN_ROPE_ROWS"


def _folded(fn):
    def apply(q, k, cos, sin, position_ids=None, unsqueeze_dim=1, *args, **kwargs):
        b, heads, s, dim = q.shape
        plain = (
            b == 1
            or args
            or kwargs
            or unsqueeze_dim != 1
            or torch.is_grad_enabled()
            or cos.dim() != 3
            or cos.shape[0] not in (1, b)
            or cos.shape[1] != s
            or k.shape[0] != b
            or k.shape[2] != s
            or os.environ.get(ENV) == "off"
        )
        if plain:
            return fn(q, k, cos, sin, position_ids, unsqueeze_dim, *args, **kwargs)
        kv = k.shape[1]
        width = cos.shape[-1]
        cos = cos.expand(b, s, width).reshape(1, b * s, width)
        sin = sin.expand(b, s, width).reshape(1, b * s, width)
        # [B, H, S, D] is a transposed view of [B, S, H, D]: merging B and S keeps it a view.
        qf = q.transpose(1, 2).reshape(1, b * s, heads, dim).transpose(1, 2)
        kf = k.transpose(1, 2).reshape(1, b * s, kv, dim).transpose(1, 2)
        qo, ko = fn(qf, kf, cos, sin, None, 1)
        return (
            qo.transpose(1, 2).reshape(b, s, heads, dim).transpose(1, 2),
            ko.transpose(1, 2).reshape(b, s, kv, dim).transpose(1, 2),
        )

    apply.leviathan_wraps = fn
    return apply


def install() -> int:
    """Fold the batch wherever a loaded transformers model module calls Liger's RoPE (Liger
    patches the modules' ``apply_rotary_pos_emb``); how many modules now do."""
    liger = sys.modules.get("liger_kernel.transformers.rope")
    fn = getattr(liger, "liger_rotary_pos_emb", None)
    if fn is None:
        return 0
    wrapped = 0
    for name, module in list(sys.modules.items()):
        if not name.startswith("transformers.models.") or module is None:
            continue
        # The module's own dict, not getattr: a lazy module (transformers' package __init__s)
        # imports on getattr, and this runs in every probe (2.97 s of imports in the first on an H100).
        current = getattr(module, "__dict__", {}).get("apply_rotary_pos_emb")
        if current is fn:
            module.apply_rotary_pos_emb = _folded(fn)
            current = module.apply_rotary_pos_emb
        wrapped += hasattr(current, "leviathan_wraps")
    return wrapped
