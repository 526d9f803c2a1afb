"""Decoding a 4-bit base at bf16 speed: a bf16 copy of its weights, held by the engine; and a
bf16 base's copy that one adapter is merged into.

bitsandbytes' 4-bit product dequantizes the whole weight on every call when more than one
token row goes through (a probe batch: every decode step re-expands every layer), and its
one-row kernel is slower than a bf16 GEMV. So when a ``Decoder`` runs a model whose base
layers are ``bitsandbytes.nn.Linear4bit`` (PEFT's QLoRA layers wrap them), each base weight
is dequantized once (``bitsandbytes.functional.dequantize_4bit``, the same expansion bnb's
own product makes) into a tensor of the layer's compute dtype, and for the length of a
``with`` block each 4-bit layer's forward becomes a plain ``F.linear`` on that copy.

The training model is untouched: its 4-bit weights, quant states, adapters and modules stay
as they are (the copy is a separate tensor; only an instance ``forward`` is swapped inside the
block and put back after). The adapters are read live by ``engine.chat.routing``, so a chat
on the live weights still reflects training; the base is frozen in QLoRA, so the copy stays
true while it lives.

Only where memory allows: the copy is made when the free memory (``free_bytes()``: on CUDA
the driver's free memory plus the allocator's cached, unused blocks) holds it plus
``MARGIN``; otherwise the 4-bit path runs, and ``note`` says which path ran and why. The
engine makes the copy before it captures any decode graph and keeps it (same addresses)
until ``Decoder.release()``, which drops the graphs with it.

It is made again for every probe session (``release`` after each suite) rather than kept
between saves: kept, it would sit beside training's activations at every step (16 GiB on an
8B base), and the estimate would have to turn gradient checkpointing on for it; made again,
it costs one dequantize pass (``seconds`` in the note; benchmarks/qlora_decode.py measures it).

A bf16 base (LoRA) gets a copy only to merge one adapter into (``plan(..., merge=True)``,
``_plan_merge``): its adapted layers' weights copied (laid out as the siblings are), the
adapter merged in as above, the layers run base only. The same memory guard; the same life.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from engine.chat import forwards
from engine.chat.routing import lora_layers
from engine.chat.sibling_products import wanted as siblings_wanted
from engine.model import siblings
from engine.model.memory import COPY_MARGIN

CHOICES = ("auto", "on", "off")
ENV = "LEVIATHAN_DECODE_BASE_COPY"  # auto (on CUDA, where memory allows) | on (CPU too) | off
MERGE_ENV = "LEVIATHAN_DECODE_MERGE"  # auto (on CUDA) | on | off: one adapter merged into the copy
MARGIN = COPY_MARGIN  # the prefill's transients and the allocator's slack, beside the copy


def four_bit_layers(core) -> list:
    """The model's bitsandbytes 4-bit linear layers (the base layers under PEFT's QLoRA)."""
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return []
    return [m for m in core.modules() if isinstance(m, Linear4bit)]


def copy_bytes(layers, dtype_bytes: int = 2) -> int:
    """What the copy of these layers takes (``dtype_bytes`` per weight, biases are kept apart)."""
    return sum(m.in_features * m.out_features for m in layers) * dtype_bytes


def free_bytes(device) -> int:
    """Memory an allocation on ``device`` can get now without taking anything from anyone."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    import psutil

    return psutil.virtual_memory().available


def covers(model, bases, name: str) -> bool:
    """Whether every LoRA layer of ``model`` that holds adapter ``name`` has its base layer among
    ``bases``: only then does a merge into their copy leave no part of the adapter behind (a
    QLoRA model's LoRA on ``lm_head``, or an 8-bit model's layers, are not in the copy)."""
    ids = {id(b) for b in bases}
    holding = (
        m
        for m in lora_layers(model)
        if name in m.lora_A or name in (getattr(m, "lora_embedding_A", None) or {})
    )
    return all(id(m.get_base_layer()) in ids for m in holding)


def plain_layers(core) -> list:
    """The plain ``nn.Linear`` base layers under the model's LoRA layers (a bf16 base's adapted
    layers: what a merged copy holds)."""
    bases = (m.get_base_layer() for m in lora_layers(core))
    # Each base once, in the model's order.
    return list(
        {id(b): b for b in bases if type(b) is torch.nn.Linear and b.weight.device.type != "meta"}.values()
    )


def _state(layer):
    """The layer's quant state (on the weight; bitsandbytes' forward falls back on the module's)."""
    state = getattr(layer.weight, "quant_state", None)
    return state if state is not None else layer.quant_state


def _plain(layer) -> bool:
    return type(layer) is torch.nn.Linear


def _dtype(layer):
    if _plain(layer):
        return layer.weight.dtype
    compute = getattr(layer, "compute_dtype", None)
    return compute if compute is not None else _state(layer).dtype


def _dequantized(layer) -> torch.Tensor:
    """The layer's weight in its compute dtype: a plain layer's own, a 4-bit one's expanded."""
    if _plain(layer):
        return layer.weight.detach()
    from bitsandbytes.functional import dequantize_4bit

    w = dequantize_4bit(layer.weight.data, _state(layer))
    return w.to(_dtype(layer)).view(layer.out_features, layer.in_features)


class BaseCopy:
    """The bf16 copies of a model's 4-bit layers, swapped in for the length of a ``with``."""

    def __init__(
        self, layers: list, weights: list[torch.Tensor], seconds: float, groups: list | None = None
    ) -> None:
        self.layers, self.weights, self.seconds = layers, weights, seconds
        self.biases = [
            m.bias.detach().to(w.dtype) if m.bias is not None else None
            for m, w in zip(layers, weights, strict=True)
        ]
        self.bytes = sum(w.numel() * w.element_size() for w in weights)
        # One function per layer for the copy's life: a compiled step sees the same forward each time.
        self._forwards = [_plain_forward(w, b) for w, b in zip(weights, self.biases, strict=True)]
        self._at = {id(m): i for i, m in enumerate(layers)}
        for mods in groups or []:  # siblings copied back to back: one product in decode
            idx = [self._at[id(m)] for m in mods]
            whole = siblings.fused_view([weights[i] for i in idx])
            if whole is not None:
                funcs = siblings.forwards([(weights[i], self.biases[i]) for i in idx], whole)
                for i, f in zip(idx, funcs, strict=True):
                    self._forwards[i] = f
        self._saved: list[tuple[object, object]] = []
        self.merged = None  # what ``merge`` put into the weights (a route's key), None: the base
        self._touched: list[int] = []

    @classmethod
    def make(cls, layers: list, groups: list | None = None) -> BaseCopy:
        """Dequantize every layer; each sibling group (``engine.model.siblings``) into one tensor."""
        t0 = time.perf_counter()
        copies: dict[int, torch.Tensor] = {}
        with torch.no_grad():
            for mods in groups or []:
                first = mods[0]
                whole = torch.empty(
                    (sum(m.out_features for m in mods), first.in_features),
                    dtype=_dtype(first),
                    device=first.weight.device,
                )
                start = 0
                for m in mods:
                    copies[id(m)] = whole[start : start + m.out_features]
                    copies[id(m)].copy_(_dequantized(m))
                    start += m.out_features
            # A plain layer's weight is the layer's own tensor: copied, never merged into in place.
            weights = [
                copies[id(m)]
                if id(m) in copies
                else _dequantized(m).clone()
                if _plain(m)
                else _dequantized(m)
                for m in layers
            ]
        if weights and weights[0].is_cuda:
            torch.cuda.synchronize(weights[0].device)
        return cls(layers, weights, time.perf_counter() - t0, groups)

    def merge(self, model, name: str | None, key) -> None:
        """Adapter ``name`` merged into the copy (``W + scaling * B @ A``, rounded once), so a
        route to it decodes as a merged model: no adapter products a step. ``key`` names what
        is merged (the route's key: adapter and weight versions); the same key again is a no-op,
        another one first dequantizes the previously merged layers again (exact, in place: a
        captured graph keeps reading the same tensors); ``name`` None leaves the base alone."""
        if self.merged == key:
            return
        with torch.no_grad():
            for i in self._touched:
                self.weights[i].copy_(_dequantized(self.layers[i]))
            self._touched = []
            for m in lora_layers(model) if name is not None else ():
                i = self._at.get(id(m.get_base_layer()))
                if i is None or name not in m.lora_A:
                    continue
                A, B = m.lora_A[name].weight, m.lora_B[name].weight
                w = self.weights[i]
                w.copy_(torch.addmm(w.float(), B.float(), A.float(), alpha=m.scaling[name]).to(w.dtype))
                self._touched.append(i)
        self.merged = key

    def __enter__(self) -> BaseCopy:
        for m, forward in zip(self.layers, self._forwards, strict=True):
            forwards.swap(self._saved, m, forward)
        return self

    def __exit__(self, *exc) -> None:
        forwards.restore(self._saved)
        siblings.forget(self._forwards)


def merge_wanted(device) -> bool:
    """Whether a single-adapter route merges its adapter into the copy (``MERGE_ENV``)."""
    return forwards.switched_on(MERGE_ENV, device)


def _plain_forward(weight: torch.Tensor, bias: torch.Tensor | None):
    def forward(x, *args, **kwargs):
        return F.linear(x.to(weight.dtype), weight, bias).to(x.dtype)

    return forward


def plan(
    core, device, choice: str, free: Callable[[], int] | None = None, beside: int = 0, merge: bool = False
) -> tuple[BaseCopy | None, str | None]:
    """(the copy or None, the note saying which path the 4-bit base decodes on; None: no 4-bit base).

    ``choice``: ``auto`` makes it on CUDA where memory allows, ``on`` on any device where memory
    allows, ``off`` never; ``LEVIATHAN_DECODE_BASE_COPY`` overrides ``auto``. ``free()`` is
    the free-memory query (``free_bytes`` on the device by default); ``beside``: what the call
    will still allocate that is not in it yet (the KV cache, which transformers makes at the
    first forward)."""
    layers = four_bit_layers(core)
    if not layers:
        return _plan_merge(core, device, choice, free, beside) if merge else (None, None)
    if choice == "auto":
        choice = os.environ.get(ENV) or "auto"
        if choice not in CHOICES:
            raise ValueError(f"{ENV}={choice!r}: one of {CHOICES}")
    if any(getattr(_state(m), "packing_format_for_cpu", False) for m in layers):
        return None, "4-bit base decoded in 4-bit (its weights are repacked for bitsandbytes' CPU kernel)"
    size = copy_bytes(layers, torch.finfo(_dtype(layers[0])).bits // 8)
    if choice == "off" or (choice == "auto" and device.type != "cuda"):
        why = "turned off" if choice == "off" else "not on CPU unless asked"
        return None, f"4-bit base decoded in 4-bit (bf16 copy {why})"
    short = _no_room(size, beside, device, free)
    if short:
        return None, f"4-bit base decoded in 4-bit: a bf16 copy needs {short}"
    made = BaseCopy.make(layers, siblings.groups(core, plain=False) if siblings_wanted(device) else None)
    return made, f"4-bit base decoded on a bf16 copy ({size_text(size)}, made in {made.seconds:.2f} s)"


def _plan_merge(core, device, choice, free, beside) -> tuple[BaseCopy | None, str | None]:
    """A bf16 base's adapted layers copied, for one adapter to be merged into (``merge``): a
    probe or a chat on one adapter then decodes as a merged model (benchmarks/generate.py on an
    H100: a checkpoint's chat 104.6 -> 114-121 tokens/s, the identity suite 3.06 -> 2.61 s).
    The training model's weights are never
    touched; the copy lives until ``Decoder.release()``, as a 4-bit base's does."""
    layers = plain_layers(core)
    if not layers:
        return None, None
    if choice == "off" or os.environ.get(ENV) == "off":
        return None, "adapter beside the bf16 base (merged copy turned off)"
    size = copy_bytes(layers, layers[0].weight.element_size())
    short = _no_room(size, beside, device, free)
    if short:
        return None, f"adapter beside the bf16 base: a merged copy needs {short}"
    ids = {id(m) for m in layers}
    groups = (
        [g for g in siblings.groups(core) if all(id(m) in ids for m in g)]
        if siblings_wanted(device)
        else None
    )
    made = BaseCopy.make(layers, groups)
    return (
        made,
        f"bf16 base copied to merge the adapter into ({size_text(size)}, made in {made.seconds:.2f} s)",
    )


def _no_room(size: int, beside: int, device, free) -> str | None:
    """What a copy of ``size`` bytes needs against what is free ("X + margin ..., Y free"), or
    None when it fits."""
    have = (free or (lambda: free_bytes(device)))()
    if size + MARGIN + beside <= have:
        return None
    also = f" + {size_text(beside)} KV cache" if beside else ""
    return f"{size_text(size)} + {size_text(MARGIN)} margin{also}, {size_text(have)} free"


def size_text(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
