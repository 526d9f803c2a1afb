#!/usr/bin/env python3
"""The GPU panel's numbers against nvidia-smi, read at the same moments, under a matmul load.

    python3 benchmarks/gpu_panel_check.py [--samples 12] [--every 1.0] [--ballast-gb 20]

Needs only torch and nvidia-ml-py. For each moment it reads ``engine.model.gpu.sample()``, runs

    nvidia-smi --query-gpu=index,memory.used,memory.total,utilization.gpu,temperature.gpu,power.draw \
        --format=csv,noheader,nounits

and reads ``engine.model.gpu.sample()`` again, then prints the engine's readings (the two
averaged; both shown where they differ), nvidia-smi's, and the difference, per GPU. A few
moments are idle, the rest under a bf16 matmul load with a memory ballast on every GPU.
Then: per field, the largest and mean difference against a tolerance; NVML's v1 vs v2
"used" memory (which one nvidia-smi shows); the cost of one ``sample()`` call; and a
``GpuSampler`` writing ``gpu`` records into a run log during the load.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.model import gpu  # noqa: E402  (stdlib-only at import; pynvml/torch load on use)
from engine.run.events import RunLog, read_events  # noqa: E402
from engine.run.rundir import RunDir  # noqa: E402

FIELDS = ["used_mb", "total_mb", "util", "temp_c", "power_w"]
SMI = [
    "nvidia-smi",
    "--query-gpu=index,memory.used,memory.total,utilization.gpu,temperature.gpu,power.draw",
    "--format=csv,noheader,nounits",
]
# How far apart the two may be and still agree. Utilisation and power are averaged by the
# driver over windows that the two reads do not share exactly; memory should match to a MiB.
TOLERANCE = {"used_mb": 2, "total_mb": 0, "util": 10, "temp_c": 1, "power_w": 0.10}  # power: relative


def _num(text: str):
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        return None  # "[N/A]", "[Not Supported]"


def smi() -> dict[int, dict]:
    out = subprocess.run(SMI, capture_output=True, text=True, timeout=20, check=True).stdout
    rows = {}
    for line in out.strip().splitlines():
        parts = line.split(",")
        idx = int(parts[0])
        rows[idx] = dict(zip(FIELDS, (_num(p) for p in parts[1:]), strict=False))
    return rows


class Load:
    """bf16 matmuls on every CUDA device, with a memory ballast, until stopped."""

    def __init__(self, ballast_gb: float, n: int = 8192) -> None:
        import torch

        self.torch = torch
        self.stop = threading.Event()
        self.n = n
        self.ballast_gb = ballast_gb
        self.threads = []
        self.iters = [0] * torch.cuda.device_count()

    def _run(self, dev: int) -> None:
        torch = self.torch
        with torch.cuda.device(dev):
            ballast = torch.empty(int(self.ballast_gb * 1024**3), dtype=torch.uint8, device=dev)
            ballast.fill_(1)
            a = torch.randn(self.n, self.n, device=dev, dtype=torch.bfloat16)
            b = torch.randn(self.n, self.n, device=dev, dtype=torch.bfloat16)
            while not self.stop.is_set():
                for _ in range(8):
                    c = a @ b
                torch.cuda.synchronize(dev)
                self.iters[dev] += 8
            del ballast, a, b, c

    def start(self) -> Load:
        for dev in range(len(self.iters)):
            t = threading.Thread(target=self._run, args=(dev,), daemon=True)
            t.start()
            self.threads.append(t)
        return self

    def end(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()


def moment() -> tuple[list[dict], dict[int, dict], list[dict], float]:
    t0 = time.perf_counter()
    before = gpu.sample()
    s = smi()
    after = gpu.sample()
    return before, s, after, time.perf_counter() - t0


def fmt(x) -> str:
    if x is None:
        return "-"
    return f"{x:.1f}" if isinstance(x, float) and x != int(x) else f"{int(x)}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=12, help="moments under load")
    ap.add_argument("--idle", type=int, default=3, help="moments before the load starts")
    ap.add_argument("--every", type=float, default=1.0, help="seconds between moments")
    ap.add_argument("--ballast-gb", type=float, default=20.0, help="GiB held on each GPU during the load")
    ap.add_argument("--no-load", action="store_true", help="compare without the matmul load")
    args = ap.parse_args()

    probe = gpu.get_probe()
    print(f"engine.model.gpu probe: available={probe.available} {probe.reason}")
    if not probe.available:
        print("nothing to compare on this machine (the null state above is what the GPU panel shows)")
        return 0
    if shutil.which("nvidia-smi") is None:
        print("nvidia-smi is not on PATH: cannot compare")
        return 1
    print("nvidia-smi:", " ".join(SMI))
    print("driver:", subprocess.run(
        ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
        capture_output=True, text=True,
    ).stdout.strip().splitlines()[0])  # fmt: skip

    rows = []  # (t, phase, gpu index, field, engine, smi)
    t_start = time.perf_counter()
    load = None
    header = f"{'t_s':>6} {'phase':5} {'gpu':>3} " + " ".join(f"{f + ' eng/smi/diff':>26}" for f in FIELDS)
    print()
    print(header)
    for i in range(args.idle + args.samples):
        if i == args.idle and not args.no_load:
            load = Load(args.ballast_gb).start()
            time.sleep(3.0)  # let the ballast land and the clocks ramp
        phase = "idle" if load is None else "load"
        before, s, after, took = moment()
        t = time.perf_counter() - t_start
        for b, a in zip(before, after, strict=True):
            idx = b["index"]
            cells = []
            for f in FIELDS:
                vals = [v for v in (b[f], a[f]) if v is not None]
                eng = sum(vals) / len(vals) if vals else None
                ref = s.get(idx, {}).get(f)
                rows.append((t, phase, idx, f, eng, ref, b[f], a[f]))
                diff = eng - ref if eng is not None and ref is not None else None
                spread = "" if b[f] == a[f] else f"({fmt(b[f])}..{fmt(a[f])})"
                cells.append(f"{fmt(eng) + spread}/{fmt(ref)}/{fmt(diff)}".rjust(26))
            print(f"{t:6.1f} {phase:5} {idx:>3} " + " ".join(cells) + f"   [{took * 1000:.0f} ms]")
        time.sleep(max(0.0, args.every - took))

    # The run-log path: a GpuSampler writing gpu records during the same load.
    tmp = Path(tempfile.mkdtemp(prefix="gpu-panel-"))
    log = RunLog(RunDir(tmp).events)
    sampler = gpu.GpuSampler(log, every_s=0.5)
    log.listeners.append(sampler)
    sampler.start()
    time.sleep(3.0)
    peak_direct = None
    import torch

    peak_direct = round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_initialized() else 0.0
    log.emit("end", status="completed")
    sampler.stop()
    log.close()
    if load is not None:
        load.end()
    gpu_records = [r for r in read_events(RunDir(tmp).events).records if r["kind"] == "gpu"]

    print("\nsummary (engine - nvidia-smi), under load and idle:")
    print(f"{'field':10} {'n':>4} {'max |diff|':>11} {'mean |diff|':>12} {'tolerance':>10}  verdict")
    ok_all = True
    for f in FIELDS:
        diffs = []
        for _t, _p, _i, ff, eng, ref, _b, _a in rows:
            if ff == f and eng is not None and ref is not None:
                diffs.append((abs(eng - ref), ref))
        if not diffs:
            print(f"{f:10} {0:>4} {'-':>11} {'-':>12} {'-':>10}  not reported by one side")
            continue
        tol = TOLERANCE[f]
        if f == "power_w":
            bad = [d for d, ref in diffs if d > tol * max(ref, 1.0)]
            tol_s = f"{tol:.0%}"
        else:
            bad = [d for d, _ in diffs if d > tol]
            tol_s = fmt(float(tol))
        verdict = "agree" if not bad else f"{len(bad)} of {len(diffs)} outside"
        ok_all &= not bad
        ds = [d for d, _ in diffs]
        print(f"{f:10} {len(ds):>4} {max(ds):>11.1f} {statistics.mean(ds):>12.2f} {tol_s:>10}  {verdict}")

    # Which NVML "used" nvidia-smi shows (v2 leaves driver-reserved memory out).
    import pynvml

    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    v1 = pynvml.nvmlDeviceGetMemoryInfo(h).used / 2**20
    try:
        v2 = pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2).used / 2**20
    except Exception as e:  # old driver
        v2 = f"n/a ({e})"
    print(f"\nGPU 0 now: NVML used v1 {fmt(v1)} MiB, v2 {fmt(v2) if isinstance(v2, float) else v2} MiB, "
          f"nvidia-smi {fmt(smi()[0]['used_mb'])} MiB")  # fmt: skip

    t0 = time.perf_counter()
    for _ in range(50):
        gpu.sample()
    per = (time.perf_counter() - t0) / 50
    print(
        f"engine.model.gpu.sample(): {per * 1000:.2f} ms per call ({len(gpu.sample())} GPU(s)), on the sampler thread"
    )

    print(
        f"\nGpuSampler (every 0.5 s for 3 s{' under load' if load else ''}): {len(gpu_records)} gpu records"
    )
    if gpu_records:
        last = gpu_records[-1]
        print(
            "  last:", json.dumps({k: last.get(k) for k in ("used_mb", "total_mb", "util", "torch_peak_mb")})
        )
        print(f"  torch_peak_mb in the record {last.get('torch_peak_mb')} vs torch.cuda.max_memory_allocated "
              f"{peak_direct} MiB (this process, current device)")  # fmt: skip
    if load is not None:
        print(f"matmul iterations per GPU: {load.iters}")
    print(
        "\nRESULT:",
        "the GPU panel agrees with nvidia-smi" if ok_all else "differences outside tolerance (above)",
    )
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
