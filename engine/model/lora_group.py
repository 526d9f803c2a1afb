"""The LoRA layers that read one input as one autograd node: their input gradient is one sum.

Autograd gives every consumer of a tensor its own input gradient and adds them: q, k, v and
their shared A product each wrote a [tokens, hidden] gradient and three add kernels summed
them (an 8B step: about 250 adds over 64-192 MiB tensors, on an H200's profile 25 ms). Here
the siblings (q/k/v, gate/up; o and down alone) are one ``autograd.Function``: its backward
writes the input gradient once and adds each further product into it in the GEMM's epilogue
(``addmm_`` with beta 1), so no tensor of the input's size is written twice.

The forward is the fused one of ``engine.model.lora_autocast`` (the same GEMMs in the same
order, bit for bit): ``base(x)`` then ``addmm_(h_i, B_i^T, alpha=scaling)`` with
``h = x @ [A_1; A_2; ...]^T``. The backward rounds the input gradient once per product
instead of once per product and once per add. Plain ``nn.Linear`` bases with frozen weights
only: bitsandbytes' 4-bit layers have their own backward.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F


class _Group(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scales, n, dtype, *params):
        As, Bs, Ws, bias = params[:n], params[n : 2 * n], params[2 * n : 3 * n], params[3 * n :]
        with torch.autocast(x.device.type, enabled=False):
            xc = x.to(dtype)
            flat = xc.reshape(-1, xc.shape[-1])
            A = torch.cat([a.to(dtype) for a in As])
            h = F.linear(flat, A)
            Bc = [b.to(dtype) for b in Bs]
            Wc = [w.to(dtype) for w in Ws]
            outs, r = [], 0
            for W, b, B, s in zip(Wc, bias, Bc, scales, strict=True):
                # Written through a 2-D view into a tensor of the output's own shape: a view
                # returned from a custom Function may not be modified in place downstream
                # (autograd forbids it), and some models do that to their projections.
                y = flat.new_empty((*x.shape[:-1], W.shape[0]))
                y2 = y.view(-1, W.shape[0])
                if b is None:
                    torch.mm(flat, W.t(), out=y2)
                else:
                    torch.addmm(b.to(dtype), flat, W.t(), out=y2)
                y2.addmm_(h[:, r : r + B.shape[1]], B.t(), alpha=s)
                r += B.shape[1]
                outs.append(y)
        ctx.save_for_backward(flat, h, A, *Bc, *Wc)
        ctx.scales, ctx.n, ctx.x_meta = scales, n, (x.shape, x.dtype)
        ctx.param_dtypes = [p.dtype for p in params[: 2 * n]]
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grads):
        n, scales = ctx.n, ctx.scales
        flat, h, A, *rest = ctx.saved_tensors
        Bc, Wc = rest[:n], rest[n:]
        rows = flat.shape[0]
        dys = [None if g is None else g.reshape(rows, g.shape[-1]).to(flat.dtype) for g in grads]
        ranks = [B.shape[1] for B in Bc]
        dh_parts, dBs, r = [], [], 0
        for dy, B, s, k in zip(dys, Bc, scales, ranks, strict=True):
            if dy is None:
                dh_parts.append(h.new_zeros(rows, k))
                dBs.append(None)
            else:
                dh_parts.append(torch.mm(dy, B).mul_(s))
                dBs.append(torch.mm(dy.t(), h[:, r : r + k]).mul_(s))
            r += k
        dh = torch.cat(dh_parts, dim=1) if n > 1 else dh_parts[0]
        dA = torch.mm(dh.t(), flat)
        need = ctx.needs_input_grad
        dA_parts = dA.split(ranks)
        out_a = [
            d.to(t) if need[4 + i] else None
            for i, (d, t) in enumerate(zip(dA_parts, ctx.param_dtypes[:n], strict=True))
        ]
        out_b = [
            None if d is None or not need[4 + n + i] else d.to(ctx.param_dtypes[n + i])
            for i, d in enumerate(dBs)
        ]
        dx = None
        if need[0]:
            for dy, W in zip(dys, Wc, strict=True):
                if dy is None:
                    continue
                dx = torch.mm(dy, W) if dx is None else dx.addmm_(dy, W)
            dx = torch.mm(dh, A) if dx is None else dx.addmm_(dh, A)
            shape, dtype = ctx.x_meta
            dx = dx.view(shape).to(dtype)
        return (dx, None, None, None, *out_a, *out_b, *([None] * (2 * n)))


class GroupProduct:
    """The outputs of sibling LoRA layers for one input, made by the first sibling that sees it
    (one autograd node) and handed out; let go once every sibling has taken its own."""

    def __init__(self, layers: list) -> None:
        self.layers = layers
        self._key: tuple | None = None
        self._outs: tuple = ()
        self._left: set[int] = set()

    def usable(self, adapter: str) -> bool:
        for m in self.layers:
            base = m.get_base_layer()
            if (
                type(base) is not torch.nn.Linear
                or adapter not in m.lora_A
                or hasattr(base, "_hf_hook")  # accelerate moves (offloads) its weights in a hook
                or hasattr(m.lora_A[adapter], "_hf_hook")
                or base.weight.device.type == "meta"
                or base.weight.requires_grad
                or (base.bias is not None and base.bias.requires_grad)
                or not isinstance(m.lora_dropout[adapter], torch.nn.Identity)
                or adapter in (getattr(m, "lora_variant", None) or {})
                or getattr(m.lora_B[adapter], "bias", None) is not None
            ):
                return False
        return True

    def output(self, i: int, x, adapter: str):
        """Sibling ``i``'s output for ``x``, or None where the group cannot compute (``usable``):
        checked by the sibling that computes, not again by the ones that take their output."""
        key = self._key
        if (
            key is not None
            and key[1] == adapter
            and key[0]() is x
            and key[2] == x._version
            and i in self._left
        ):
            out = self._outs[i]
        else:
            if not self.usable(adapter):
                return None
            dtype = torch.get_autocast_dtype(x.device.type)
            ms = self.layers
            bases = [m.get_base_layer() for m in ms]
            params = (
                [m.lora_A[adapter].weight for m in ms]
                + [m.lora_B[adapter].weight for m in ms]
                + [b.weight for b in bases]
                + [b.bias for b in bases]
            )
            scales = tuple(float(m.scaling[adapter]) for m in ms)
            self._outs = _Group.apply(x, scales, len(ms), dtype, *params)
            self._key = (weakref.ref(x), adapter, x._version)
            self._left = set(range(len(ms)))
            out = self._outs[i]
        self._left.discard(i)
        if not self._left:  # every sibling has its output: hold none past the layer
            self.forget()
        return out

    def forget(self) -> None:
        self._outs, self._key, self._left = (), None, set()
