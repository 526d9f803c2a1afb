"""Which adapter each row of a batch goes through, without PEFT's per-sample path.

PEFT's mixed-batch inference (``adapter_names=[...]``) splits every LoRA layer's input by
row with index tensors built from Python lists on each call: many small launches, a host
copy per layer, nothing a CUDA graph can hold. A ``Route`` instead replaces, for the
length of a ``with`` block, each LoRA linear layer's forward with a lean one:

- one target for the whole batch (a chat, a suite): ``base(x) + B(A(x)) * scaling`` of that
  adapter only (no dropout: inference), or the base layer alone for ``base``;
- several (compare): every adapter named in the batch runs on the whole batch, and a
  per-row scale (the adapter's scaling on its rows, 0 elsewhere) keeps each row's own.

Nothing about the model changes: not the active adapter, not ``requires_grad``, not the
weights. On CUDA the adapter's matrices are used in the base layer's dtype (copies when
PEFT keeps them in float32) and the second product adds into the base output in one
``addmm``; layers that read one input (q/k/v, gate/up) share one product for their A
matrices (``group``, default on CUDA); on CPU the arithmetic is PEFT's own, operation for operation, so greedy answers
equal PEFT's. Layers this does not cover (DoRA and other variants, merged adapters, saved
whole modules) make ``supported`` False: the caller uses PEFT's own path then.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from engine.chat import forwards
from engine.model import siblings
from engine.model.lora_autocast import SIBLINGS

# Layers that read the same input tensor: their A products become one (fewer launches a token).


def lora_layers(model) -> list:
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # pragma: no cover
        return []
    return [m for m in model.modules() if isinstance(m, LoraLayer)]


@contextlib.contextmanager
def adapter_kept(model):
    """The active adapter and every parameter's ``requires_grad`` put back after the block
    (PEFT's ``set_adapter`` marks the adapter it activates trainable)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    active = getattr(model, "active_adapter", None)
    try:
        yield
    finally:
        if active is not None and getattr(model, "active_adapter", None) != active:
            model.set_adapter(active)
        for p, flag in flags:
            if p.requires_grad != flag:
                p.requires_grad_(flag)


def _unsupported(model, names: set[str]) -> str | None:
    from peft.tuners.lora import Linear

    try:
        from peft.utils import ModulesToSaveWrapper
    except ImportError:  # pragma: no cover
        ModulesToSaveWrapper = ()  # noqa: N806
    for m in model.modules():
        if ModulesToSaveWrapper and isinstance(m, ModulesToSaveWrapper):
            return "the adapter saves whole modules"
    for m in lora_layers(model):
        # An embedding's LoRA lives in lora_embedding_A: left out here, its layer would keep
        # PEFT's forward and add the active adapter's delta to every row, whatever the route.
        here = names & (set(m.lora_A.keys()) | set((getattr(m, "lora_embedding_A", None) or {}).keys()))
        if not here:
            continue
        if not isinstance(m, Linear) and not _quantized(m):
            return f"{type(m).__name__} layers"
        if getattr(m, "merged", False):
            return "an adapter is merged into the weights"
        if here & set(getattr(m, "lora_variant", {}) or {}) or any(
            (getattr(m, "use_dora", {}) or {}).get(n) for n in here
        ):
            return "DoRA or another LoRA variant"
    return None


def _quantized(m) -> bool:
    """PEFT's LoRA over a bitsandbytes 4-bit or 8-bit base (QLoRA): its base layer computes
    the base product, the adapter's products are the same as over a plain Linear."""
    return type(m).__name__ in ("Linear4bit", "Linear8bitLt") and type(m).__module__.startswith("peft.")


def _compute_dtype(base):
    """The dtype a base layer computes in: its weight's, or a 4-bit layer's ``compute_dtype``."""
    w = getattr(base, "weight", None)
    if w is not None and w.dtype in (torch.bfloat16, torch.float16, torch.float32):
        return w.dtype
    return getattr(base, "compute_dtype", None)


class Route:
    """Rows of a batch to adapters: ``names[i]`` is row i's adapter, None for the base.

    ``key`` identifies the routing (captured decode graphs are kept per key).
    """

    def __init__(self, model, names: list[str | None], group: bool | None = None) -> None:
        self.model = model
        self.group = group
        self.names = list(names)
        wanted = {n for n in self.names if n is not None}
        self.layers = lora_layers(model)
        # Which tensors the adapters are now: a reloaded checkpoint of the same name is another route.
        first = {n: m.lora_A[n].weight for m in reversed(self.layers) for n in wanted if n in m.lora_A}
        self.key = (tuple(self.names), tuple((n, w.data_ptr(), w._version) for n, w in sorted(first.items())))
        self.reason = _unsupported(model, wanted) if self.layers else None
        self.supported = self.reason is None
        self._saved: list[tuple[object, object]] = []
        self._plans: list[tuple[object, list]] | None = None
        self._groups: dict[int, tuple[dict, int]] = {}

    def _plan(self) -> list[tuple[object, list]]:
        plans = []
        rows = len(self.names)
        for m in self.layers:
            entries = []
            for name in dict.fromkeys(n for n in self.names if n is not None):
                if name not in m.lora_A:
                    continue
                A, B = m.lora_A[name].weight, m.lora_B[name].weight
                bias = getattr(m.lora_B[name], "bias", None)
                base_dtype = _compute_dtype(m.get_base_layer())
                half = A.is_cuda and base_dtype in (torch.bfloat16, torch.float16) and A.dtype != base_dtype
                if half:  # inference copies in the base's dtype: fewer casts, half the bytes
                    A, B = A.detach().to(base_dtype), B.detach().to(base_dtype)
                    bias = bias.detach().to(base_dtype) if bias is not None else None
                scale = m.scaling[name]
                if all(n == name for n in self.names):
                    row_scale = None
                else:
                    row_scale = torch.tensor(
                        [scale if n == name else 0.0 for n in self.names], dtype=A.dtype, device=A.device
                    ).view(rows)
                entries.append((A.detach(), B.detach(), bias, scale, row_scale))
            plans.append((m, entries))
        names = {id(m): n for n, m in self.model.named_modules()}
        self._groups = _groups(plans, self.group, names)
        return plans

    def __enter__(self) -> Route:
        if not self.supported or not self.layers:
            return self
        if self._plans is None:
            self._plans = self._plan()
        for m, entries in self._plans:
            forwards.swap(self._saved, m, _lean_forward(m.get_base_layer(), entries, self._groups.get(id(m))))
        return self

    def __exit__(self, *exc) -> None:
        forwards.restore(self._saved)
        for shared, _ in self._groups.values():  # let go of the last input
            for k in ("x", "mids", "gx", "gver", "gparts"):
                shared.pop(k, None)


def _groups(plans, group: bool | None, names: dict[int, str]) -> dict[int, tuple[dict, int]]:
    """Sibling layers with one adapter each, in the base's dtype: module id -> (shared, index).

    ``shared`` holds the concatenated A matrices, their row splits, and at run time the last
    input seen with its products (the first sibling to see an input computes them all). Where
    the siblings' base weights lie back to back (``engine.model.siblings``) it also holds the
    whole base weight and the B matrices as one block-diagonal matrix (scalings folded in): a
    one-row step then computes base and adapter of the whole group in three GEMMs.
    """
    by_parent: dict[tuple[str, tuple], list] = {}
    for m, entries in plans:
        if len(entries) != 1 or entries[0][4] is not None or entries[0][2] is not None:
            continue
        A = entries[0][0]
        if group is False or (group is None and not A.is_cuda):
            continue
        parent, _, leaf = names.get(id(m), "").rpartition(".")
        for sib in SIBLINGS:
            if leaf in sib:
                by_parent.setdefault((parent, sib), []).append((sib.index(leaf), m, entries[0]))
    out = {}
    for members in by_parent.values():
        if len(members) < 2 or len({(e[0].dtype, e[0].shape[1], e[0].device) for _, _, e in members}) != 1:
            continue
        members.sort(key=lambda t: t[0])
        shared = {
            "A": torch.cat([e[0] for _, _, e in members]),
            "splits": [e[0].shape[0] for _, _, e in members],
        }
        shared.update(_whole_group([m for _, m, _ in members], [e for _, _, e in members]))
        for i, (_, m, _) in enumerate(members):
            out[id(m)] = (shared, i)
    return out


def _whole_group(mods, entries) -> dict:
    """The group's base weight (when laid out back to back) and block-diagonal scaled B."""
    bases = [m.get_base_layer() for m in mods]
    if any(type(b) is not torch.nn.Linear for b in bases):
        return {}
    whole = siblings.fused_view([b.weight for b in bases])
    A = entries[0][0]
    if whole is None or whole.dtype != A.dtype or whole.device != A.device:
        return {}
    outs = [b.out_features for b in bases]
    ranks = [e[0].shape[0] for e in entries]
    Bbd = torch.zeros((sum(outs), sum(ranks)), dtype=A.dtype, device=A.device)
    o = r = 0
    for (_, B, _, scale, _), n_out, n_r in zip(entries, outs, ranks, strict=True):
        Bbd[o : o + n_out, r : r + n_r] = B * scale
        o, r = o + n_out, r + n_r
    bias = siblings.whole_bias([b.weight for b in bases], [b.bias for b in bases])
    return {"W": whole, "bias": bias, "Bbd": Bbd, "outs": outs}


def _lean_forward(base, entries, grouped=None):
    def a_product(xa, A):
        flat = xa.reshape(-1, xa.shape[-1])
        if grouped is None:
            return F.linear(flat, A)
        shared, i = grouped
        if shared.get("x") is not xa:
            shared["x"] = xa
            shared["mids"] = F.linear(flat, shared["A"]).split(shared["splits"], dim=-1)
        return shared["mids"][i]

    def whole_group(x):
        shared, i = grouped
        if shared.get("gx") is not x or shared.get("gver") != x._version:
            flat = x.reshape(-1, x.shape[-1])
            whole = F.linear(flat, shared["W"], shared["bias"])
            whole.addmm_(F.linear(flat, shared["A"]), shared["Bbd"].t())
            shared["gx"], shared["gver"], shared["gparts"] = (
                x,
                x._version,
                whole.split(shared["outs"], dim=-1),
            )
        part = shared["gparts"][i]
        return part.view(*x.shape[:-1], part.shape[-1])

    def forward(x, *args, **kwargs):
        if (
            grouped is not None
            and "W" in grouped[0]
            and x.numel() == x.shape[-1]
            and x.dtype == grouped[0]["W"].dtype
        ):
            return whole_group(x)  # one row: base and adapter of all siblings in three GEMMs
        result = base(x, *args, **kwargs)
        dtype = result.dtype
        for A, B, bias, scale, row_scale in entries:
            xa = x.to(A.dtype)
            if row_scale is None and bias is None and (A.is_cuda or grouped) and A.dtype == dtype:
                result = result if result.is_contiguous() else result.contiguous()
                flat = result.reshape(-1, result.shape[-1])  # a view of `result`
                mid = a_product(xa, A)
                # In place: out of place, addmm first copies `flat` (a memcpy a layer and token).
                flat.addmm_(mid, B.t(), alpha=scale)
                continue
            delta = F.linear(F.linear(xa, A), B, bias)
            if row_scale is None:
                result = result + delta * scale
            else:
                result = result + delta * row_scale.view(-1, *([1] * (delta.dim() - 1)))
        return result.to(dtype)

    return forward
