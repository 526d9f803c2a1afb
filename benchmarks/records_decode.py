"""Benchmark: what reading the run log through the typed records costs (engine/run/records.py).

    python benchmarks/records_decode.py [--n 200000]

Decodes the step records of the vendored demo log (tests/old_runlog/events.jsonl, repeated to
``--n``) into ``records.Step`` and reads four fields, against reading the same four fields of the
dicts with ``.get`` (the plain alternative, what readers did before). Also times the strict-mode
check (``records.problems``, run by ``RunLog.emit`` only when LEVIATHAN_STRICT_RECORDS=1) and
``json.loads`` of the same lines, for scale. Per record, best of 5; the load average is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from engine.run import records

LOG = Path(__file__).resolve().parent.parent / "tests" / "old_runlog" / "events.jsonl"


def best_us(fn, n: int, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best / n * 1e6


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=200_000)
    n = p.parse_args().n
    lines = [line for line in LOG.read_text().splitlines() if '"kind":"step"' in line]
    lines = (lines * (n // len(lines) + 1))[:n]
    dicts = [json.loads(line) for line in lines]

    def plain():
        return [(r.get("step"), r.get("loss"), r.get("epoch"), r.get("max_steps")) for r in dicts]

    def typed():
        return [(s.step, s.loss, s.epoch, s.max_steps) for s in map(records.decode, dicts)]

    rows = [
        ("dict .get x4 (before)", best_us(plain, n)),
        ("decode + 4 attributes (after)", best_us(typed, n)),
        ("strict check (tests only)", best_us(lambda: [records.problems(r) for r in dicts], n)),
        ("json.loads of the line", best_us(lambda: [json.loads(x) for x in lines], n)),
    ]
    base = rows[0][1]
    print(f"{n:,} step records, load average {os.getloadavg()[0]:.2f}")
    print(f"| {'what':<32} | us/record | x plain |")
    print(f"|{'-' * 34}|-----------|---------|")
    for name, us in rows:
        print(f"| {name:<32} | {us:9.2f} | {us / base:7.1f} |")


if __name__ == "__main__":
    main()
