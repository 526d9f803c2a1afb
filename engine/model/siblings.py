"""Sibling projections (q/k/v, gate/up: layers that read one input) as one product in decode.

A decode step at batch 1 reads every weight once through a GEMV; k_proj and v_proj are small
(1024 x 4096 on an 8B) and each GEMV pays a fixed cost beside its bytes. When the siblings'
weights lie one after the other in one storage, ``[q; k; v]`` is a single [rows, in] matrix
and one GEMV computes all three. ``relayout`` puts plain ``nn.Linear`` siblings there (each
layer's weight becomes a row slice of one tensor: contiguous, the same values, no extra
memory once the old tensors are freed), and ``forwards`` gives each sibling a forward that
computes the whole group's product when the first of them sees an input of one row (batch-1
decode) and hands the others their slice. With more rows (a batch, a prefill, a training step) every layer
keeps its own GEMM on its own slice: stacked, cuBLAS picks slower kernels for those widths
(benchmarks/step_roofline.py measured q|k|v at 28.2 ms against 19.0 for the three).

The training model is laid out so too (``engine.model.model.attach_lora``, one process, not
quantized): its layers compute exactly as before on contiguous slices; only decode (probes,
chat on the live weights) reads the whole. ``engine.chat.base_copy`` lays a 4-bit base's bf16
copy out the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.model.lora_autocast import SIBLINGS

# Token rows up to which the group's product is one GEMM: one row (batch-1 decode), where its
# slices are contiguous for free. With more, each slice would be copied out (measured on an
# H100, 8B, batch 5: 180 copies a token, +1.2 ms) where three GEMMs cost less.
SMALL_ROWS = 1


def base_of(module):
    """The frozen linear layer under PEFT's LoRA wrapper (or the module itself)."""
    get = getattr(module, "get_base_layer", None)
    return get() if callable(get) else module


def groups(model, plain: bool = True) -> list[list]:
    """Sibling groups of base layers, in ``SIBLINGS`` order (2 or more): plain ``nn.Linear``
    ones, or (``plain=False``) bitsandbytes' 4-bit ones."""
    out = []
    for parent in model.modules():
        for names in SIBLINGS:
            mods = [base_of(getattr(parent, n)) for n in names if getattr(parent, n, None) is not None]
            if len(mods) >= 2 and all(_kind_ok(m, plain) for m in mods) and _alike(mods):
                out.append(mods)
    return out


def _kind_ok(m, plain: bool) -> bool:
    if plain:
        return type(m) is torch.nn.Linear and not hasattr(m, "_hf_hook")  # accelerate moves its weights
    return type(m).__name__ == "Linear4bit" and type(m).__module__.startswith("bitsandbytes")


def _alike(mods) -> bool:
    w0 = mods[0].weight
    return w0.device.type != "meta" and all(
        m.weight.device == w0.device and m.in_features == mods[0].in_features and m.weight.dtype == w0.dtype
        for m in mods
    )


def fused_view(weights: list[torch.Tensor]) -> torch.Tensor | None:
    """The [rows, in] matrix the weights are row slices of, when they lie back to back."""
    w0 = weights[0]
    storage = w0.untyped_storage().data_ptr()
    offset = w0.storage_offset()
    for w in weights:
        if not w.is_contiguous() or w.untyped_storage().data_ptr() != storage or w.storage_offset() != offset:
            return None
        offset += w.numel()
    rows = sum(w.shape[0] for w in weights)
    return w0.detach().as_strided((rows, w0.shape[1]), (w0.shape[1], 1))


@torch.no_grad()
def relayout(model) -> int:
    """Put each sibling group's weights back to back in one tensor; the number of groups laid out."""
    n = 0
    for mods in groups(model):
        if fused_view([m.weight for m in mods]) is not None:
            continue
        whole = torch.cat([m.weight.detach() for m in mods])
        start = 0
        for m in mods:
            rows = m.weight.shape[0]
            m.weight = torch.nn.Parameter(whole[start : start + rows], requires_grad=m.weight.requires_grad)
            start += rows
        n += 1
    return n


def forwards(members: list[tuple[torch.Tensor, torch.Tensor | None]], whole: torch.Tensor) -> list:
    """One forward per member ``(weight, bias)`` of a group whose weights are the row slices of
    ``whole`` in order. An input of one row: the first member to see it computes the group's
    product, the others take their slice of it; more rows: each its own product."""
    bias = whole_bias([w for w, _ in members], [b for _, b in members])
    shared: dict = {"splits": [w.shape[0] for w, _ in members]}

    def make(i: int, weight, own_bias):
        def forward(x, *args, **kwargs):
            if x.numel() // x.shape[-1] > SMALL_ROWS:
                return F.linear(x.to(weight.dtype), weight, own_bias).to(x.dtype)
            if shared.get("x") is not x or shared.get("version") != x._version:
                shared["x"], shared["version"] = x, x._version
                shared["parts"] = F.linear(x.to(whole.dtype), whole, bias).split(shared["splits"], dim=-1)
            # A slice of the last dim is contiguous only for one row; kernels downstream
            # (Liger's norms and SwiGLU) view their input flat.
            return shared["parts"][i].to(x.dtype).contiguous()

        forward.shared = shared
        return forward

    return [make(i, w, b) for i, (w, b) in enumerate(members)]


def whole_bias(weights, biases) -> torch.Tensor | None:
    """The group's bias for its whole product: each member's, zeros where one has none."""
    if all(b is None for b in biases):
        return None
    return torch.cat(
        [b if b is not None else w.new_zeros(w.shape[0]) for w, b in zip(weights, biases, strict=True)]
    )


def forget(funcs) -> None:
    """Let go of the last input (and its products) the forwards hold."""
    for f in funcs:
        for k in ("x", "version", "parts"):
            getattr(f, "shared", {}).pop(k, None)  # a forward of no group holds nothing
