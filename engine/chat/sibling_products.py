"""The decode-time forwards of a model's sibling layers whose weights lie back to back.

``engine.model.siblings`` lays q/k/v and gate/up out in one tensor (models loaded for
inference, the training model) and makes their shared-product forwards; this swaps those
forwards in for the length of a ``Decoder`` call, as ``engine.chat.base_copy`` does for a
4-bit base's copy and ``engine.chat.routing`` for the adapters (composed: routing's forward
calls the base layer, whose forward is this one).
"""

from __future__ import annotations

from engine.chat import forwards
from engine.model import siblings

ENV = "LEVIATHAN_DECODE_SIBLINGS"  # auto (on CUDA) | on (CPU too) | off


def wanted(device) -> bool:
    """Whether decode on ``device`` computes sibling products as one (``ENV``)."""
    return forwards.switched_on(ENV, device)


class SiblingProducts:
    """Every laid-out sibling group of ``core``'s plain linear layers, swapped in on ``with``.

    Off the GPU only when asked: on CPU the engine's arithmetic stays layer for layer as
    PEFT's and transformers' (a stacked GEMM may sum in another order), so greedy answers
    equal theirs."""

    def __init__(self, core, device) -> None:
        self.swaps: list[tuple[object, object]] = []
        self._saved: list[tuple[object, object]] = []
        if not wanted(device):
            return
        for mods in siblings.groups(core):
            whole = siblings.fused_view([m.weight for m in mods])
            if whole is None:
                continue
            funcs = siblings.forwards([(m.weight, m.bias) for m in mods], whole)
            self.swaps += list(zip(mods, funcs, strict=True))

    def __bool__(self) -> bool:
        return bool(self.swaps)

    def __enter__(self) -> SiblingProducts:
        for m, forward in self.swaps:
            forwards.swap(self._saved, m, forward)
        return self

    def __exit__(self, *exc) -> None:
        forwards.restore(self._saved)
        siblings.forget([f for _, f in self.swaps])
