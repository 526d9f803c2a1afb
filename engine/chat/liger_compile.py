"""Liger's Triton kernels kept out of a compiled decode step.

The trainer swaps the model's RMSNorm and SwiGLU modules for Liger's (Triton kernels behind
``torch.autograd.Function``). ``torch.compile`` of the decode step (``compile-graph``,
``compile``: ``engine.chat.decode``) on the live training model then traced into every one
of those kernel launches: a user Triton kernel that Dynamo has to wrap and analyse at each call
site (145 norms in an 8B Qwen3: 36 layers x 4, and the last), with a warning each time it could
not, and a kernel Inductor cannot fuse with its neighbours when it could. A GPU run's log held
5,298 lines of one such warning about Liger's RMSNorm.

While compiling (``torch.compiler.is_compiling()``, a constant to Dynamo), these modules take
the plain PyTorch expression of the same math, which Inductor fuses; run eagerly (training,
``graph`` decode steps) they are Liger's kernels as before. The switch is made once per
process, on the classes, the first time a decoder compiles.
"""

from __future__ import annotations

import torch

_MODES = {"llama": 0, "gemma": 1, "none": -1}


def rms_norm(module, x):
    """Liger's RMSNorm in PyTorch ops, casting as its kernel does (``casting_mode``): llama
    computes the rstd in float32 and weights in the input's dtype, gemma all in float32, none
    all in the input's dtype; the weight is ``offset + weight``."""
    mode = getattr(module, "casting_mode", "llama")
    mode = _MODES.get(mode, mode)
    eps = getattr(module, "variance_epsilon", getattr(module, "eps", 1e-6))
    offset = float(getattr(module, "offset", 0.0) or 0.0)
    w = getattr(module, "weight", None)
    h = x if mode == -1 else x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    if mode == 0:
        h = h.to(x.dtype)
    if w is not None:
        h = h * ((w.float() if mode == 1 else w) + offset)
    return h.to(x.dtype)


def swiglu(module, x):
    """Liger's SwiGLU MLP in PyTorch ops: silu of the gate in float32, cast, times the up."""
    a = module.gate_proj(x)
    b = module.up_proj(x)
    return module.down_proj(torch.nn.functional.silu(a.float()).to(b.dtype) * b)


def _when_compiling(cls, traced) -> None:
    eager = cls.forward
    if getattr(eager, "_leviathan_traced", None) is not None:
        return  # switched before

    def forward(self, x):
        if torch.compiler.is_compiling():
            return traced(self, x)
        return eager(self, x)

    forward._leviathan_traced = traced
    cls.forward = forward


def keep_liger_out_of_compile() -> None:
    """Make Liger's RMSNorm and SwiGLU modules trace as PyTorch ops (nothing without Liger)."""
    try:
        from liger_kernel.transformers.rms_norm import LigerRMSNorm
        from liger_kernel.transformers.swiglu import LigerSwiGLUMLP
    except Exception:  # not installed, or no Triton here: nothing of Liger's to trace
        return
    _when_compiling(LigerRMSNorm, rms_norm)
    _when_compiling(LigerSwiGLUMLP, swiglu)
