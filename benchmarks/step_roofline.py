"""The floor under one training step: the GEMMs and attention of a LoRA step, timed alone.

    python3 benchmarks/step_roofline.py            # 8B-shaped Qwen3, micro batch 4 x 2048 tokens
    python3 benchmarks/step_roofline.py --tiny     # a CPU smoke run

Times each matmul one step of step_profile.py / throughput.py needs, at its real shape (M =
tokens of a micro-batch), with CUDA events: the frozen layers' forward and input gradient, the
LoRA A/B products and their three backward products, the LM head, and varlen flash attention
forward and backward over documents of 256-2048 tokens. Their sum is the time a step cannot go
under with these kernels; set against the measured step (step_profile.py) it says how much is
glue (norms, element-wise, launch gaps) and how much is the matmuls themselves. Fused variants
(q|k|v in one product, gate|up in one, the base weight with LoRA's A stacked under it) are timed
beside them, the plain per-layer sum against the fused one: what fusing could buy, measured.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from engine.model.mfu import matmul_ceiling  # noqa: E402


def timed(fn, reps: int) -> float:
    """Milliseconds per call (events on CUDA, wall clock elsewhere)."""
    import time

    for _ in range(2):
        fn()
    if not torch.cuda.is_available():
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t0) * 1e3 / reps
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps):
        fn()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / reps


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--tokens", type=int, default=4 * 2048)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    dev, dt = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    if args.tiny:
        h, inter, heads, kv, hd, layers, vocab, m = 64, 128, 4, 2, 16, 2, 1024, 256
    else:
        h, inter, heads, kv, hd, layers, vocab, m = 4096, 12288, 32, 8, 128, 36, 151936, args.tokens
    r, reps = args.rank, (args.reps if cuda else 2)
    linears = {
        "q": (h, heads * hd),
        "k": (h, kv * hd),
        "v": (h, kv * hd),
        "o": (heads * hd, h),
        "gate": (h, inter),
        "up": (h, inter),
        "down": (inter, h),
    }
    g = lambda *s: torch.randn(*s, device=dev, dtype=dt) * 0.02  # noqa: E731
    rows: list[tuple[str, float, float]] = []  # name, ms per step (all layers), TFLOP/s

    def add(name, fn, flops, per_step):
        ms = timed(fn, reps)
        rows.append((name, ms * per_step, flops / (ms / 1e3) / 1e12))

    for name, (k, n) in linears.items():
        x, w, dy = g(m, k), g(n, k), g(m, n)
        add(f"{name} fwd  x@W^T", lambda x=x, w=w: x @ w.t(), 2 * m * k * n, layers)
        add(f"{name} bwd  dY@W", lambda dy=dy, w=w: dy @ w, 2 * m * k * n, layers)
        A, B = g(r, k), g(n, r)
        xa, da = g(m, r), g(m, r)
        lora_fwd = lambda x=x, A=A, B=B, y=g(m, n): y.add_((x @ A.t()) @ B.t(), alpha=2.0)  # noqa: E731
        add(f"{name} LoRA fwd", lora_fwd, 4 * m * r * (k + n), layers)

        def lora_bwd(x=x, A=A, B=B, dy=dy, xa=xa, da=da, dx=g(m, k)):
            dy.t() @ xa  # dB
            d = dy @ B  # d(xA)
            d.t() @ x  # dA
            dx.add_(d @ A)  # the input gradient through A

        add(f"{name} LoRA bwd", lora_bwd, 8 * m * r * (k + n), layers)
    x, wl, dy = g(m, h), g(vocab, h), g(m, vocab)
    add("lm_head fwd", lambda x=x, wl=wl: x @ wl.t(), 2 * m * h * vocab, 1)
    add("lm_head bwd dX", lambda dy=dy, wl=wl: dy @ wl, 2 * m * h * vocab, 1)
    del wl, dy
    # Fused candidates, one layer's worth: compare with the sum of their parts above.
    qkv = (heads + 2 * kv) * hd
    fused = {
        "q|k|v fused fwd": (h, qkv),
        "gate|up fused fwd": (h, 2 * inter),
        "q + A stacked fwd": (h, heads * hd + r),
    }
    for name, (k, n) in fused.items():
        xx, w = g(m, k), g(n, k)
        add(name, lambda xx=xx, w=w: xx @ w.t(), 2 * m * k * n, layers)
    attn_ms = attention_ms(m, heads, kv, hd, layers, reps, dev, dt)
    if attn_ms is not None:
        rows.append(("attention fwd+bwd (varlen)", attn_ms, float("nan")))
    ceiling = matmul_ceiling() if cuda else None
    print(f"device: {torch.cuda.get_device_name(0) if cuda else 'cpu'}  tokens/step {m}  rank {r}")
    if ceiling:
        print(f"matmul ceiling (8192^3): {ceiling / 1e12:.0f} TFLOP/s")
    print(f"{'product':<28} {'ms/step':>9} {'TFLOP/s':>8}")
    for name, ms, tf in rows:
        print(f"{name:<28} {ms:>9.1f} {tf:>8.0f}")
    plain = [r_ for r_ in rows if "fused" not in r_[0] and "stacked" not in r_[0]]
    base = sum(ms for n, ms, _ in plain if "LoRA" not in n)
    lora = sum(ms for n, ms, _ in plain if "LoRA" in n)
    print(
        f"\nfloor: frozen matmuls + attention {base:.1f} ms, LoRA products {lora:.1f} ms, "
        f"together {base + lora:.1f} ms/step = {m / ((base + lora) / 1e3):,.0f} tok/s at most"
    )
    return 0


def attention_ms(m, heads, kv, hd, layers, reps, dev, dt) -> float | None:
    from engine.model import attention

    if dev != "cuda" or attention._VARLEN is None:
        return None
    g = torch.Generator().manual_seed(0)
    cuts, total = [0], 0
    while total < m:
        n = min(int(torch.randint(256, 2049, (1,), generator=g)), m - total)
        total += n
        cuts.append(total)
    cu = torch.tensor(cuts, device=dev, dtype=torch.int32)
    mx = int((cu[1:] - cu[:-1]).max())
    q = torch.randn(m, heads, hd, device=dev, dtype=dt, requires_grad=True)
    k = torch.randn(m, kv, hd, device=dev, dtype=dt, requires_grad=True)
    v = torch.randn(m, kv, hd, device=dev, dtype=dt, requires_grad=True)

    def step():  # the engine's own call (its causal and GQA arguments for this torch)
        out = attention._flash_varlen(q, k, v, cu, mx, hd**-0.5, heads // kv)
        out.sum().backward()

    try:
        return timed(step, reps) * layers
    except Exception as e:  # an older torch without the flag: say so, do not guess
        print(f"attention not timed: {e}")
        return None


if __name__ == "__main__":
    sys.exit(main())
