"""LoRA layers for training under autocast: no input cast, the scaling and the sum in the GEMM.

PEFT keeps a bf16 base's adapter weights in fp32 (``autocast_adapter_dtype``: the optimizer
updates fp32 masters) and its ``lora.Linear.forward`` casts the layer's input to the adapter's
dtype first. Under the trainer's bf16 autocast that cast is undone at once: the A product
casts the fp32 copy back to bf16. So every adapted linear wrote and read a full fp32 copy of
its input in the forward, and the gradient made the same round trip in the backward (252
layers of an 8B model a step): a bf16 LoRA step ran slower than a 4-bit one, whose PEFT
layers skip the cast under autocast. Then ``result + lora_B(h) * scaling`` writes the B
product, scales it and adds it in three passes over a [tokens, out] tensor (and the
backward scales the gradient in a fourth); ``addmm(result, h, B^T, alpha=scaling)`` does the
three in the GEMM's epilogue, and its backward folds alpha into the small products.

Under autocast the layer computes ``addmm(base(x), A(dropout(x)), B^T, alpha=scaling)``.
Skipping the cast alone changes no bit (bf16 -> fp32 -> bf16 is exact both ways); the fused
sum rounds once where PEFT rounds three times (tests/test_lora_autocast.py bounds the
difference). Anything else (no autocast, merged or disabled adapters, a LoRA variant such as
DoRA, a bias on B, mixed-adapter batches) goes through PEFT's own forward. The decode engine's
routing (engine/chat/routing.py) swaps this forward out and back as it does PEFT's.
"""

from __future__ import annotations

import os

import torch

ENV = "LEVIATHAN_LORA_FORWARD"  # "peft": PEFT's forward as it is (benchmarks compare both)


class FusedForward:
    """The instance ``forward`` of one PEFT LoRA layer (a class, so a copied model copies it)."""

    def __init__(self, layer) -> None:
        self.layer = layer

    def __call__(self, x, *args, **kwargs):
        m = self.layer
        cls_forward = type(m).forward
        if args or kwargs or m.disable_adapters or m.merged or not torch.is_autocast_enabled(x.device.type):
            return cls_forward(m, x, *args, **kwargs)
        active = [a for a in m.active_adapters if a in m.lora_A]
        if any(a in m.lora_variant or getattr(m.lora_B[a], "bias", None) is not None for a in active):
            return cls_forward(m, x, *args, **kwargs)
        result = m.base_layer(x)
        out = result.reshape(-1, result.shape[-1])
        for a in active:
            h = m.lora_A[a](m.lora_dropout[a](x))
            out = torch.addmm(out, h.reshape(-1, h.shape[-1]), m.lora_B[a].weight.t(), alpha=m.scaling[a])
        return out.view(result.shape)


def fuse_lora_layers(model) -> int:
    """Gives every PEFT LoRA linear of ``model`` the fused forward; returns how many."""
    if os.environ.get(ENV) == "peft":
        return 0
    from peft.tuners.lora import LoraLayer

    n = 0
    for module in model.modules():
        if isinstance(module, LoraLayer) and "forward" not in module.__dict__ and _linear(module):
            module.forward = FusedForward(module)
            n += 1
    return n


def _linear(module) -> bool:
    # Linear layers only (bf16 Linear, bitsandbytes 4/8-bit); embeddings and convolutions keep PEFT's.
    base = module.get_base_layer()
    return isinstance(base, torch.nn.Linear) or type(base).__name__ in ("Linear4bit", "Linear8bitLt")
