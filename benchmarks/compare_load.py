"""Reading a long run log for the side-by-side view: engine.run.compare against the plain reader.

    python3 benchmarks/compare_load.py                 # a 1M-step log plus a 10k-step one
    python3 benchmarks/compare_load.py --steps 100000

Writes a run log shaped like a real one (a step record with every field the engine writes, an
eval every 1000 steps, a gpu record every 10), then times, in this process: the plain way
(``engine.run.events.read_events``: every line through ``json.loads`` into dicts, then
``dedupe_steps``) and ``compare.load_curves`` (msgspec into the few fields a curve needs, arrays),
and the peak Python memory of each (tracemalloc). Then both runs are downsampled to a 200-column
chart, as the view draws them.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.run.compare import downsample, load_curves  # noqa: E402
from engine.run.events import dedupe_steps, read_events  # noqa: E402


def write_log(path: Path, steps: int, seed: int = 0) -> int:
    rng = random.Random(seed)
    t = 1.7e9
    with open(path, "w") as f:
        f.write(json.dumps({"t": t, "kind": "start", "step": 0, "max_steps": steps}) + "\n")
        for s in range(1, steps + 1):
            t += 0.9
            rec = {
                "t": round(t, 3),
                "kind": "step",
                "step": s,
                "loss": round(2.5 / (1 + s / 5e4) + rng.random() * 0.05, 4),
                "lr": 2e-4,
                "grad_norm": round(rng.random(), 4),
                "epoch": round(s / (steps / 3), 6),
                "tokens": s * 65536,
                "tokens_per_s": 11000.0,
                "mfu": 0.47,
            }
            f.write(json.dumps(rec, separators=(",", ":")) + "\n")
            if s % 10 == 0:
                f.write(json.dumps({"t": t, "kind": "gpu", "step": s, "gpus": [{"used_mb": 70000}]}) + "\n")
            if s % 1000 == 0:
                f.write(json.dumps({"t": t, "kind": "eval", "step": s, "eval_loss": 1.2}) + "\n")
        f.write(json.dumps({"t": t, "kind": "end", "step": steps, "status": "completed"}) + "\n")
    return path.stat().st_size


def measure(fn):
    """(result, seconds, peak traced bytes): timed without tracemalloc, its memory in a second call."""
    gc.collect()
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    del out
    gc.collect()
    tracemalloc.start()
    out = fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, dt, peak


def plain(path: Path):
    records = read_events(path).records
    steps = dedupe_steps(records)
    return [r["step"] for r in steps], [r.get("loss") for r in steps]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1_000_000)
    ap.add_argument("--second", type=int, default=10_000)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lev-compare-"))
    rows = []
    for name, n in (("full", args.steps), ("10%", args.second)):
        (work / name).mkdir()
        size = write_log(work / name / "events.jsonl", n)
        (xs, ys), t_plain, m_plain = measure(lambda p=work / name / "events.jsonl": plain(p))
        curves, t_ours, m_ours = measure(lambda p=work / name: load_curves(p))
        assert list(curves.step) == xs and list(curves.loss) == ys  # the same curve both ways
        t0 = time.perf_counter()
        downsample(curves.epoch, curves.loss, 200)
        t_draw = time.perf_counter() - t0
        rows.append((name, n, size, t_plain, m_plain, t_ours, m_ours, t_draw))
    print(
        f"{'run':<6} {'steps':>9} {'MB':>6} {'plain s':>8} {'plain MB':>9} {'ours s':>7} {'ours MB':>8} {'x faster':>8} {'draw s':>7}"
    )
    for name, n, size, tp, mp, to, mo, td in rows:
        print(
            f"{name:<6} {n:>9,} {size / 1e6:>6.0f} {tp:>8.2f} {mp / 1e6:>9.0f} {to:>7.2f} {mo / 1e6:>8.0f} "
            f"{tp / to:>8.1f} {td:>7.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
