"""Where one training step's GPU time goes: ours (LoRA, QLoRA) on the 8B-shaped Qwen3 of throughput.py.

    python3 benchmarks/step_profile.py                    # ours LoRA and QLoRA, 8B shape, CUDA
    python3 benchmarks/step_profile.py --variants ours    # LoRA only
    python3 benchmarks/step_profile.py --tiny             # a CPU smoke run of the script

Each variant runs in a fresh process (as throughput.py does: Liger patches module functions),
trains `--warmup` steps, then records `--profile-steps` steps under torch.profiler. The kernels
are sorted into buckets by name (matmul, attention, norms, LoRA's rank-r matmuls by their
operator's input shapes, 4-bit dequantisation, optimizer, element-wise, copies) and set against
the steps' wall time: what is left is the GPU waiting on the host (launch gaps, syncs). The
child's stderr is kept and its most repeated lines are counted (a warning printed every step
shows up here).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import throughput as tp  # noqa: E402
import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

BUCKETS = [  # first match wins; kernel names of cuBLAS/CUTLASS, flash, Liger (triton), bnb, fused Adam
    ("attention", ("flash", "fmha", "attn", "sdpa")),
    ("dequant 4-bit", ("dequant", "kdequantize", "nf4", "4bit")),
    ("optimizer", ("adam", "multi_tensor", "foreach")),
    ("norms", ("rms", "norm")),
    ("matmul", ("gemm", "cutlass", "xmma", "nvjet", "cublas", "sm90", "wgmma", "matmul")),
    ("copies", ("memcpy", "memset", "copy", "cat", "index")),
    ("loss / softmax", ("cross_entropy", "softmax", "logsumexp", "_ce_", "flce")),
]


def bucket(name: str, buckets=BUCKETS) -> str:
    low = name.lower()
    for label, keys in buckets:
        if any(k in low for k in keys):
            return label
    return "element-wise / other"


class ProfileSteps(TrainerCallback):
    """Starts the profiler after the warm-up steps and stops it after the profiled ones."""

    def __init__(self, warmup: int, n: int) -> None:
        self.warmup, self.n = warmup, n
        self.prof = None
        self.t0 = self.t1 = 0.0

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup:
            torch.cuda.synchronize() if torch.cuda.is_available() else None
            acts = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                acts.append(torch.profiler.ProfilerActivity.CUDA)
            self.prof = torch.profiler.profile(activities=acts, record_shapes=True)
            self.prof.__enter__()
            self.t0 = time.perf_counter()
        elif state.global_step == self.warmup + self.n and self.prof is not None:
            torch.cuda.synchronize() if torch.cuda.is_available() else None
            self.t1 = time.perf_counter()
            self.prof.__exit__(None, None, None)
            control.should_training_stop = True


def lora_matmul_time(prof, rank: int) -> float:
    """Device time (us) of mm/addmm/linear ops whose input shapes have the LoRA rank as a dimension."""
    total = 0.0
    for e in prof.key_averages(group_by_input_shape=True):
        if e.key not in ("aten::mm", "aten::addmm", "aten::matmul", "aten::linear", "aten::bmm"):
            continue
        dims = [d for shape in (e.input_shapes or []) if isinstance(shape, list) for d in shape]
        if rank in dims:
            total += getattr(e, "self_device_time_total", 0.0) or 0.0
    return total


SYNCS = (
    "cudaStreamSynchronize",
    "cudaDeviceSynchronize",
    "cudaEventSynchronize",
    "aten::_local_scalar_dense",
)


def host_waits(prof, n: int) -> dict:
    """Where the GPU waited on the host: syncs the host asked for (count, host ms, per step) and
    the idle gaps between kernels (over 50 us), with the kernels that ended the longest gaps."""
    syncs: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
    kernels = []
    for e in prof.events():
        if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA:
            kernels.append((e.time_range.start, e.time_range.end, e.name))
        elif e.name in SYNCS:
            syncs[e.name][0] += 1
            syncs[e.name][1] += (e.time_range.end - e.time_range.start) / 1e3
    kernels.sort()
    gaps, spans, last = [], [], None
    for start, end, name in kernels:
        if last is not None and start - last > 50:
            gaps.append((start - last, name))
            spans.append((last, start))
        last = end if last is None else max(last, end)
    after = collections.Counter()
    for gap, name in sorted(gaps, reverse=True)[:200]:
        after[name[:70]] += gap / 1e3
    return {
        "syncs": {k: (v[0] / n, v[1] / n) for k, v in syncs.items()},
        "gaps_over_50us": (len(gaps) / n, sum(g for g, _ in gaps) / 1e3 / n),
        "kernels_after_longest_gaps_ms": after.most_common(8),
        "host_during_gaps_ms": host_during(prof, spans, n),
    }


def host_during(prof, spans: list, n: int) -> list:
    """What the host was running while the GPU sat idle: each gap's time shared out to the
    top-level CPU ops (any thread: the backward runs on autograd's) it overlaps, by name; the
    time no op covers is Python between ops. ms per step, the largest first."""
    import numpy as np

    tops = [
        e
        for e in prof.events()
        if getattr(e, "device_type", None) == torch.autograd.DeviceType.CPU and e.cpu_parent is None
    ]
    if not spans or not tops:
        return []
    starts = np.array([e.time_range.start for e in tops], dtype=np.float64)
    ends = np.array([e.time_range.end for e in tops], dtype=np.float64)
    names = [e.name[:70] for e in tops]
    per: dict[str, float] = collections.defaultdict(float)
    for gs, ge in spans:
        hit = np.nonzero((starts < ge) & (ends > gs))[0]
        covered = 0.0
        for i in hit:
            o = min(ends[i], ge) - max(starts[i], gs)
            per[names[i]] += o
            covered = max(covered, o)
        per["(no op: Python between ops)"] += max(0.0, (ge - gs) - covered)
    return sorted(((k, v / 1e3 / n) for k, v in per.items()), key=lambda kv: -kv[1])[:14]


def summarize(cb: ProfileSteps, rank: int) -> dict:
    wall_us = (cb.t1 - cb.t0) * 1e6 / cb.n
    per: dict[str, float] = collections.defaultdict(float)
    for e in cb.prof.events():
        if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA:
            per[bucket(e.name)] += e.device_time / cb.n  # us per step
    lora = lora_matmul_time(cb.prof, rank) / cb.n
    busy = sum(per.values())
    out = {"wall_ms": wall_us / 1e3, "busy_ms": busy / 1e3, "lora_mm_ms": lora / 1e3}
    out["buckets_ms"] = {k: v / 1e3 for k, v in sorted(per.items(), key=lambda kv: -kv[1])}
    out["host"] = host_waits(cb.prof, cb.n)
    out["top_kernels"] = [
        (e.key[:90], e.device_time_total / cb.n / 1e3, e.count // cb.n)
        for e in sorted(cb.prof.key_averages(), key=lambda e: -e.device_time_total)[:40]
    ]
    return out


def child(args) -> int:
    from datasets import Dataset

    from engine.model.tiny import build_tokenizer

    tokenizer = build_tokenizer("qwen3")
    cfg = tp.qwen3_config(args.tiny, len(tokenizer))
    n_docs = int((args.warmup + args.profile_steps + 2) * tp.MICRO * tp.SEQ / 1100 * 1.3) + 20
    docs = tp.make_docs(n_docs, cfg.vocab_size, lo=32 if args.tiny else 256, hi=256 if args.tiny else tp.SEQ)
    dataset = Dataset.from_dict({"input_ids": docs})
    qlora = "qlora" in args.variant
    if qlora:
        model = tp.load_4bit(args.save_dir)
    else:
        from transformers import AutoModelForCausalLM

        dev = "cuda" if torch.cuda.is_available() else "cpu"
        model = AutoModelForCausalLM.from_pretrained(
            args.save_dir, dtype=torch.bfloat16 if dev == "cuda" else torch.float32
        ).to(dev)
    args.steps, args.force_gc = args.warmup + args.profile_steps + 1, None
    cb = ProfileSteps(args.warmup, args.profile_steps)
    orig = tp.Timer

    class WithProfile(orig):  # throughput's own run with our profiler in its callback slot
        def on_step_end(self, a, state, control, **kw):
            cb.on_step_end(a, state, control, **kw)
            return super().on_step_end(a, state, control, **kw)

    tp.Timer = WithProfile
    out = tp.run_ours(model, tokenizer, dataset, args, f"{args.work}/{args.variant}", qlora)
    row = summarize(cb, 16)
    row["variant"], row["grad_ckpt"], row["note"] = args.variant, out[3], out[4]
    row["tokens_per_step"] = tp.MICRO * tp.SEQ
    row["alloc"] = tp.alloc_stats()
    if os.environ.get("OUT") and torch.cuda.is_available():  # the timeline, for a closer look
        trace = Path(os.environ["OUT"], f"trace-{args.variant}.json")
        cb.prof.export_chrome_trace(str(trace))
        subprocess.run(["gzip", "-9f", str(trace)], check=False)
    Path(args.json).write_text(json.dumps(row))
    return 0


variant_env = tp.variant_env


def repeated_lines(text: str, n: int = 3) -> list[tuple[int, str]]:
    counts = collections.Counter(line.strip()[:160] for line in text.splitlines() if line.strip())
    return [(c, line) for line, c in counts.most_common(n) if c > 1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default="ours,ours-qlora")
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--profile-steps", type=int, default=2)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--save-dir", default=None)
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--variant", default="ours")
    ap.add_argument("--json", default=None)
    ap.add_argument("--work", default=None)
    args = ap.parse_args()
    if args.child:
        return child(args)

    from engine.model.tiny import build_tokenizer

    work = args.work or tempfile.mkdtemp(prefix="lev-prof-")
    save = args.save_dir or f"{work}/base"
    tokenizer = build_tokenizer("qwen3")
    cfg = tp.qwen3_config(args.tiny, len(tokenizer))
    if not Path(save, "config.json").exists():
        model = tp.build_model(cfg, args.tiny)
        model.save_pretrained(save)
        tokenizer.save_pretrained(save)
        del model
        tp.free()
    ceiling = tp.matmul_ceiling()
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(f"device: {dev}  matmul ceiling: {ceiling / 1e12:.0f} TFLOP/s", flush=True)
    rows = []
    for name in args.variants.split(","):
        if "qlora" in name and not torch.cuda.is_available():
            continue
        out = Path(work) / f"{name}.json"
        cmd = [sys.executable, __file__, "--child", "--variant", name, "--save-dir", save]
        cmd += ["--json", str(out), "--work", work, "--warmup", str(args.warmup)]
        cmd += ["--profile-steps", str(args.profile_steps)] + (["--tiny"] if args.tiny else [])
        t0 = time.time()
        proc = subprocess.run(cmd, env=variant_env(name), stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0 or not out.exists():
            print(f"{name}: failed (exit {proc.returncode})\n{proc.stderr[-3000:]}", flush=True)
            continue
        row = json.loads(out.read_text())
        row["repeated_stderr"] = repeated_lines(proc.stderr)
        row["stderr_lines"] = len(proc.stderr.splitlines())
        rows.append(row)
        print(f"{name}: {time.time() - t0:.0f}s", flush=True)
    for r in rows:
        tps = r["tokens_per_step"] / (r["wall_ms"] / 1e3)
        print(f"\n== {r['variant']}  wall {r['wall_ms']:.0f} ms/step  {tps:,.0f} tok/s  gc={r['grad_ckpt']}")
        print(f"{'bucket':<24} {'ms/step':>9} {'% of wall':>9}")
        for k, v in r["buckets_ms"].items():
            print(f"{k:<24} {v:>9.1f} {100 * v / r['wall_ms']:>8.1f}%")
        print(
            f"{'(of which LoRA rank-r mm)':<24} {r['lora_mm_ms']:>9.1f} {100 * r['lora_mm_ms'] / r['wall_ms']:>8.1f}%"
        )
        idle = r["wall_ms"] - r["busy_ms"]
        print(f"{'GPU idle (host-bound)':<24} {idle:>9.1f} {100 * idle / r['wall_ms']:>8.1f}%")
        h = r["host"]
        n_gaps, gap_ms = h["gaps_over_50us"]
        print(f"GPU gaps over 50 us: {n_gaps:.0f}/step, {gap_ms:.1f} ms/step; host syncs per step:")
        for name, (count, ms) in h["syncs"].items():
            print(f"  {count:>6.0f}  {ms:>8.1f} ms  {name}")
        print("  kernels that ended the longest gaps (ms of gap before them, over the profiled steps):")
        for name, ms in h["kernels_after_longest_gaps_ms"]:
            print(f"  {ms:>8.1f}  {name}")
        print("  host ops running during those gaps (ms/step; ops on two threads can overlap):")
        for name, ms in h.get("host_during_gaps_ms", []):
            print(f"  {ms:>8.1f}  {name}")
        print(f"  allocator: {r.get('alloc')}")
        print("top kernels (ms/step, launches/step):")
        for name, ms, n in r["top_kernels"][:24]:
            print(f"  {ms:>8.1f} {n:>6}  {name}")
        print(f"stderr: {r['stderr_lines']} lines; most repeated: {r['repeated_stderr']}")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "step_profile.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
