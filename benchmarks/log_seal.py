"""What the run log's seal (engine/run/seal.py) costs per record, against the plain write.

Three writers of the same step records (the shape the trainer emits each logging step), in the
same run, into a temporary folder:

- ``plain write``: one ``os.write`` of the JSON line on an ``O_APPEND`` descriptor (the floor);
- ``plain write + seal every record``: the same, then ``Sealer.after`` (an xxh3 update and one
  ``pwrite`` of the 128-byte seal): what the chat transcripts do;
- ``plain write + seal at most every 0.25 s``: the hash per record, the seal's rewrite throttled
  (what ``RunLog`` does, ``SEAL_INTERVAL_S``);
- ``RunLog.emit``: the real writer as the trainer calls it (record check, JSON, write, seal).
  ``RunLog.emit`` without a seal is main's; run this file's ``--records`` with PYTHONPATH on a
  checkout of it to compare (the closing note has both).

Prints a table of microseconds per record (median of ``--repeats`` passes) and the ratios.

    python3 benchmarks/log_seal.py --records 20000 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.run.events import SEAL_INTERVAL_S, RunLog  # noqa: E402
from engine.run.seal import Sealer  # noqa: E402


def record(i: int) -> dict:
    return {"step": i, "loss": 1.0 / (i + 1), "grad_norm": 0.5, "learning_rate": 2e-4, "tokens": 4096 * i}


def line(i: int) -> bytes:
    return (
        json.dumps({"t": time.time(), "kind": "step", **record(i)}, separators=(",", ":")) + "\n"
    ).encode()


def plain(path: Path, n: int, seal: float | None) -> float:
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    sealer = Sealer(path, seal) if seal is not None else None
    if sealer:
        sealer.start(fd)
    t0 = time.perf_counter()
    for i in range(n):
        data = line(i)
        before = os.fstat(fd).st_size
        os.write(fd, data)
        if sealer:
            sealer.after(fd, before, data)
    dt = time.perf_counter() - t0
    os.close(fd)
    if sealer:
        sealer.close()
    return dt / n


def runlog(path: Path, n: int) -> float:
    log = RunLog(path)
    t0 = time.perf_counter()
    for i in range(n):
        log.emit("step", **record(i))
    dt = time.perf_counter() - t0
    log.close()
    return dt / n


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--records", type=int, default=20000)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    every, throttled = (
        "plain write + seal every record",
        f"plain write + seal at most every {SEAL_INTERVAL_S} s",
    )
    runs = {"plain write": [], every: [], throttled: [], "RunLog.emit (with seal)": []}
    for r in range(args.repeats):
        with tempfile.TemporaryDirectory() as d:
            runs["plain write"].append(plain(Path(d) / f"a{r}.jsonl", args.records, None))
            runs[every].append(plain(Path(d) / f"b{r}.jsonl", args.records, 0.0))
            runs[throttled].append(plain(Path(d) / f"c{r}.jsonl", args.records, SEAL_INTERVAL_S))
            runs["RunLog.emit (with seal)"].append(runlog(Path(d) / "events.jsonl", args.records))
    base = statistics.median(runs["plain write"])
    print(f"{args.records} step records, median of {args.repeats} passes\n")
    print("| writer | µs per record | ratio to plain write |\n|---|---|---|")
    for name, times in runs.items():
        med = statistics.median(times)
        print(f"| {name} | {med * 1e6:.1f} | {med / base:.2f}x |")
    for name in (every, throttled):
        print(f"\n{name}: adds {(statistics.median(runs[name]) - base) * 1e6:.1f} µs per record", end="")
    print()


if __name__ == "__main__":
    main()
