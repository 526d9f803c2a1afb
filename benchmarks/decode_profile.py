"""Where a decode token's GPU time goes, on the 8B shape at batch 1 and the identity suite's batch 5.

    python3 benchmarks/decode_profile.py          # on the GPU machine (~100 s)
    python3 benchmarks/decode_profile.py --tiny   # a CPU smoke run

For the merged model (transformers' own modules), the same with Liger's RMSNorm/SwiGLU/RoPE
kernels (what a training model has), and the model with a LoRA r16 adapter on every linear
(routed as chat routes it): the engine's eager decode steps are profiled (a CUDA graph
replays the same kernels, so their count and time are what a graph step costs, minus the
launches), kernels sorted into buckets, and the graph step's wall time per token measured
beside it. The weights' bytes over the measured copy bandwidth is the floor.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from generate import ours_rows  # noqa: E402
from step_profile import bucket  # noqa: E402

BUCKETS = [  # step_profile's bucket() over a decode step's kernels: GEMVs, the cache's copies
    ("matmul / gemv", ("gemm", "gemv", "cutlass", "xmma", "nvjet", "sm90", "matmul", "splitk")),
    ("attention", ("flash", "fmha", "attn", "efficient")),
    ("norms", ("rms", "norm", "pow", "mean", "rsqrt")),
    ("copies / cache", ("copy", "memcpy", "memset", "index", "cat", "scatter", "fill")),
]


def profile(model, rows, new: int, answer: int | None = None) -> dict:
    """``new`` steps profiled; ``answer``: the answer length the cache is sized for (the
    suite's 256: a longer cache is more attention), its graph steps timed over all of it."""
    from engine.chat.generate import release, run_rows

    answer = answer or new
    run_rows(model, rows, max_new_tokens=4, stop_ids=set(), pad_id=0, mode="eager")
    acts = [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if torch.cuda.is_available() else []
    )
    steps = iter(range(new + 1, 0, -1))
    with torch.profiler.profile(activities=acts) as prof:
        run_rows(
            model, rows, max_new_tokens=answer + 1, stop_ids=set(), pad_id=0, mode="eager",
            should_stop=lambda: next(steps, 0) <= 1,
        )  # fmt: skip
    per: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
    for e in prof.events():
        if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA:
            kind = bucket(e.name, BUCKETS)
            per[kind][0] += e.device_time
            per[kind][1] += 1
    out = {k: (v[0] / new, v[1] / new) for k, v in per.items()}  # the prefill is a small share
    mode = "graph" if torch.cuda.is_available() else "eager"
    ours_rows(model, rows, answer, mode)  # the capture
    _, _, tps, _, used = ours_rows(model, rows, answer, mode)
    release(model)
    return {"buckets": out, "wall_ms_per_token": 1e3 * len(rows) / tps, "mode": used}  # a step's


def bandwidth_floor_ms(model) -> float:
    if not torch.cuda.is_available():
        return float("nan")
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    a = torch.empty(2**28, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    b.copy_(a)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        b.copy_(a)
    torch.cuda.synchronize()
    gbps = 2 * a.numel() * 10 / (time.perf_counter() - t0)
    del a, b
    return 1e3 * nbytes / gbps


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--new", type=int, default=16)
    args = ap.parse_args()
    from peft import LoraConfig, get_peft_model
    from shapes import qwen3_config
    from transformers import AutoModelForCausalLM

    cuda = torch.cuda.is_available()
    dev, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    cfg = qwen3_config(args.tiny or not cuda)
    with torch.device(dev):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval()
    rows = [list(range(100, 164))]
    results = [("merged", profile(model, rows, args.new))]
    floor = bandwidth_floor_ms(model)
    if cuda:
        try:
            from liger_kernel.transformers import apply_liger_kernel_to_qwen3

            apply_liger_kernel_to_qwen3(
                rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                fused_linear_cross_entropy=False, model=model,
            )  # fmt: skip
            results.append(("merged + Liger kernels", profile(model, rows, args.new)))
        except ImportError:
            pass
    from engine.model.decode_attention import ENV as GQA
    from engine.model.siblings import relayout

    relayout(model)  # as load_for_inference and the training model lay them out
    results.append(("+ siblings one product (q/k/v, gate/up)", profile(model, rows, args.new)))
    suite = [list(range(100, 130 + 7 * i)) for i in range(5)]  # the identity suite's batch
    # The identity suite's shape (5 rows, 256-token answers, a 512-token cache), K/V repeated
    # per query head (transformers' sdpa up to 5.2x) against the grouped step the engine runs.
    os.environ[GQA] = "off"
    results.append(("batch 5 x 256, K/V repeated per head", profile(model, suite, args.new, 256)))
    os.environ.pop(GQA)
    results.append(("batch 5 x 256, grouped heads (default)", profile(model, suite, args.new, 256)))
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
    peft_model = get_peft_model(model, lora).eval()
    results.append(
        (
            "LoRA adapter (routed)" + (" + Liger" if any("Liger" in n for n, _ in results) else ""),
            profile(peft_model, rows, args.new),
        )
    )
    results.append(("LoRA routed, batch 5 x 256", profile(peft_model, suite, args.new, 256)))
    print(f"device: {torch.cuda.get_device_name(0) if cuda else 'cpu'}  batch 1, {args.new} tokens profiled")
    print(f"floor: weights over copy bandwidth = {floor:.2f} ms/token")
    for name, r in results:
        total = sum(ms for ms, _ in r["buckets"].values())
        kernels = sum(n for _, n in r["buckets"].values())
        print(f"\n== {name}: {r['mode']} step {r['wall_ms_per_token']:.2f} ms/token "
              f"({1e3 / r['wall_ms_per_token']:.0f} tok/s); eager kernels {kernels:.0f}/token, "
              f"GPU busy {total / 1e3:.2f} ms/token")  # fmt: skip
        for k, (us, n) in sorted(r["buckets"].items(), key=lambda kv: -kv[1][0]):
            print(f"  {k:<22} {us / 1e3:>7.2f} ms  {n:>6.0f} kernels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
