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

Siblings that read one input (q, k and v; gate and up) share their A product: the first to
see the input multiplies it by their A matrices stacked (one GEMM reading the input once
where three read it three times, and one GEMM for its input gradient in the backward where
three wrote three and summed them); the others take their columns. Only without LoRA
dropout: each layer's dropout draws its own mask, so their inputs differ.
"""

from __future__ import annotations

import os
import weakref

import torch

# "peft": PEFT's forward as it is; "noshare": no sibling sharing; "nogroup": siblings share the A
# product but each layer is its own autograd node (engine/model/lora_group.py is the default)
ENV = "LEVIATHAN_LORA_FORWARD"
# Layers that read the same input in the architectures we train (decode's routing groups them too).
SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"), ("query", "key", "value"))


class SharedA:
    """The A products of sibling layers for one input, made by the first sibling that sees it."""

    def __init__(self, layers: list) -> None:
        self.layers = layers
        self._key: tuple | None = None  # (weak reference to the input, adapter)
        self._mids: tuple = ()

    def product(self, i: int, x, adapter: str):
        """Layer ``i``'s A product of ``x``, or None where the siblings cannot share it."""
        key = self._key
        if key is not None and key[1] == adapter and key[0]() is x:
            return self._mids[i]
        weights = []
        for m in self.layers:
            if adapter not in m.lora_A or not isinstance(m.lora_dropout[adapter], torch.nn.Identity):
                return None
            weights.append(m.lora_A[adapter].weight)
        h = torch.nn.functional.linear(x, torch.cat(weights))
        self._mids = h.split([w.shape[0] for w in weights], dim=-1)
        self._key = (weakref.ref(x), adapter)
        return self._mids[i]


class FusedForward:
    """The instance ``forward`` of one PEFT LoRA layer (a class, so a copied model copies it)."""

    def __init__(self, layer, shared: SharedA | None = None, index: int = 0, group=None) -> None:
        self.layer, self.shared, self.index, self.group = layer, shared, index, group

    def __call__(self, x, *args, **kwargs):
        m = self.layer
        cls_forward = type(m).forward
        if args or kwargs or m.disable_adapters or m.merged or not torch.is_autocast_enabled(x.device.type):
            return cls_forward(m, x, *args, **kwargs)
        active = [a for a in m.active_adapters if a in m.lora_A]
        if any(a in m.lora_variant or getattr(m.lora_B[a], "bias", None) is not None for a in active):
            return cls_forward(m, x, *args, **kwargs)
        if self.group is not None and len(active) == 1:
            out = self.group.output(self.index, x, active[0])  # engine/model/lora_group.py
            if out is not None:
                return out
        result = m.base_layer(x)
        out = result.reshape(-1, result.shape[-1])
        # Out of place, addmm first copies `out` into its result (a device-to-device memcpy of
        # [tokens, out] a layer: 252 a step, 10 ms on an H200's profile); a plain Linear's output
        # is saved by nothing, so the sum goes into it. bitsandbytes' output keeps PEFT's caution.
        inplace = type(m.get_base_layer()) is torch.nn.Linear
        for a in active:
            h = (
                self.shared.product(self.index, x, a)
                if self.shared is not None and len(active) == 1
                else None
            )
            if h is None:
                h = m.lora_A[a](m.lora_dropout[a](x))
            h, B = h.reshape(-1, h.shape[-1]), m.lora_B[a].weight
            if inplace:  # in-place ops are outside autocast: B in the activations' dtype by hand
                out = out.addmm_(h, B.t().to(out.dtype), alpha=m.scaling[a])
            else:
                out = torch.addmm(out, h, B.t(), alpha=m.scaling[a])
        return out.view(result.shape)


def fuse_lora_layers(model) -> int:
    """Gives every PEFT LoRA linear of ``model`` the fused forward; returns how many."""
    if os.environ.get(ENV) == "peft":
        return 0
    from peft.tuners.lora import LoraLayer

    layers = {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, LoraLayer) and "forward" not in m.__dict__ and _linear(m)
    }
    choice = os.environ.get(ENV)
    shared = {} if choice == "noshare" else _siblings(layers)
    groups = {} if choice in ("noshare", "nogroup") else _groups(layers, shared)
    for name, m in layers.items():
        m.forward = FusedForward(m, *shared.get(name, (None, 0)), group=groups.get(name))
    return len(layers)


def forget(model) -> None:
    """Drop every product a sibling group holds for its siblings still to come. A forward that
    raised midway (an OOM) leaves them held, and with them the failed step's whole autograd
    graph: the OOM guard calls this before it runs the step again in halves."""
    for m in model.modules():
        f = m.__dict__.get("forward")
        if isinstance(f, FusedForward):
            if f.shared is not None:
                f.shared._key, f.shared._mids = None, ()
            if f.group is not None:
                f.group.forget()


def _groups(layers: dict, shared: dict) -> dict:
    """Full name -> GroupProduct: each sibling group with plain ``nn.Linear`` bases as one
    autograd node, and every other such layer as a group of one."""
    from engine.model.lora_group import GroupProduct

    out, seen = {}, {}
    for name, m in layers.items():
        if type(m.get_base_layer()) is not torch.nn.Linear:
            continue
        sa = shared.get(name, (None, 0))[0]
        if sa is None:
            out[name] = GroupProduct([m])
            continue
        if id(sa) not in seen:
            if any(type(x.get_base_layer()) is not torch.nn.Linear for x in sa.layers):
                continue
            seen[id(sa)] = GroupProduct(sa.layers)
        out[name] = seen[id(sa)]
    return out


def _siblings(layers: dict) -> dict:
    """Full name -> (SharedA, index) for each group of two or more siblings under one parent."""
    groups: dict[tuple, dict[int, str]] = {}
    for name in layers:
        parent, _, leaf = name.rpartition(".")
        for sib in SIBLINGS:
            if leaf in sib:
                groups.setdefault((parent, sib), {})[sib.index(leaf)] = name
    out = {}
    for members in groups.values():
        names = [members[k] for k in sorted(members)]
        widths = {layers[n].get_base_layer().in_features for n in names}
        if len(names) > 1 and len(widths) == 1:
            shared = SharedA([layers[n] for n in names])
            out.update({n: (shared, i) for i, n in enumerate(names)})
    return out


def _linear(module) -> bool:
    # Linear layers only (bf16 Linear, bitsandbytes 4/8-bit); embeddings and convolutions keep PEFT's.
    base = module.get_base_layer()
    return isinstance(base, torch.nn.Linear) or type(base).__name__ in ("Linear4bit", "Linear8bitLt")
