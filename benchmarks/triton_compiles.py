"""Triton kernels a block of code compiled or loaded from the disk cache (an in-memory miss each):
what a first call pays that the next one does not.

    with TritonCompiles() as tc:
        run_rows(...)
    tc.names   # e.g. ['_triton_rope', '_triton_rope', '_rms_norm_forward_kernel']
    tc.specs   # the same kernels with their specialisation (launch options, argument attributes)

Without Triton (CPU machines) the list stays empty and ``tc.available`` is False.
"""

from __future__ import annotations


class TritonCompiles:
    def __init__(self) -> None:
        self.names: list[str] = []
        self.specs: list[str] = []
        self.available = False
        self._undo = None

    def _hook(self, *args, **kwargs):
        fn = kwargs.get("fn")
        self.names.append(getattr(fn, "name", None) or str(kwargs.get("repr", "?")).split("[")[0])
        configs = (kwargs.get("compile") or {}).get("configs")
        self.specs.append(f"{kwargs.get('repr', '?')} attrs={configs}"[:900])
        return False  # not handled here: Triton goes on to compile or load it

    def __enter__(self) -> TritonCompiles:
        try:
            import triton
        except ImportError:
            return self
        runtime = getattr(getattr(triton, "knobs", None), "runtime", None)
        if runtime is not None and hasattr(runtime, "jit_cache_hook"):
            old = runtime.jit_cache_hook
            runtime.jit_cache_hook = self._hook
            self._undo = lambda: setattr(runtime, "jit_cache_hook", old)
        else:
            from triton.runtime.jit import JITFunction

            old = JITFunction.cache_hook
            JITFunction.cache_hook = self._hook
            self._undo = lambda: setattr(JITFunction, "cache_hook", old)
        self.available = True
        return self

    def __exit__(self, *exc) -> None:
        if self._undo is not None:
            self._undo()

    def summary(self) -> str:
        if not self.available:
            return "no triton"
        from collections import Counter

        return f"{len(self.names)} triton kernels built" + (
            " (" + ", ".join(f"{n} x{c}" for n, c in Counter(self.names).items()) + ")" if self.names else ""
        )
