"""Benchmark: what verifying the prepared data on open costs (engine.data.prepcheck).

    PYTHONPATH=. python benchmarks/prepcheck_cost.py [--rows 100000] [--mean-len 300] [--dir DIR]

Writes a preparation-shaped folder (rows.arrow of ``--rows`` random rows, lengths around
``--mean-len`` tokens, ids below Qwen3's 151,936; the split and packing index files) through the
same writers as ``engine.data.prepare``, then times, each best of 3 (the files in the page cache,
as on a second start):

- the plain open: ``Dataset.from_file`` and the index files memory-mapped (what a start did before);
- ``prepcheck.verify_bytes``: every file read and hashed per 8 MiB chunk, with xxh3-128 (what
  is recorded) and with blake2b (the plain alternative);
- ``prepcheck.load_index`` + ``check_rows``: dtypes, bounds, ids < vocab, mask in {0, 1}.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from engine.data import prepcheck
from engine.data.prepare import _index, rows_batch, rows_schema

VOCAB = 151_936


def build(folder: Path, rows: int, mean_len: int) -> int:
    import pyarrow as pa

    rng = np.random.default_rng(0)
    lengths = np.clip(rng.normal(mean_len, mean_len / 3, rows), 8, 4 * mean_len).astype(np.int32)
    with pa.OSFile(str(folder / "rows.arrow"), "wb") as sink, pa.ipc.new_stream(sink, rows_schema()) as w:
        for a in range(0, rows, 10_000):
            part = lengths[a : a + 10_000]
            n = int(part.sum())
            ids = rng.integers(0, VOCAB, n, dtype=np.int32)
            mask = rng.integers(0, 2, n, dtype=np.int8)
            w.write_batch(rows_batch(ids, mask, part, ["c"] * len(part)))
    config = SimpleNamespace(val_set_size=0.01, seed=42, sequence_len=2048, sample_packing=True)
    for name, arr in _index(config, lengths).items():
        np.save(folder / f"{name}.npy", arr)
    return int(lengths.sum())


def best(fn, n: int = 3) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--mean-len", type=int, default=300)
    p.add_argument("--dir", default=None)
    a = p.parse_args()
    from datasets import Dataset

    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        folder = Path(d)
        tokens = build(folder, a.rows, a.mean_len)
        meta = {"integrity": prepcheck.digests(folder), "rows": a.rows}
        size = sum(f.stat().st_size for f in folder.iterdir())

        def plain():
            Dataset.from_file(str(folder / "rows.arrow"))
            for n in prepcheck.INDEX:
                np.load(folder / f"{n}.npy", mmap_mode="r")

        def checks():
            table = Dataset.from_file(str(folder / "rows.arrow")).data.table
            prepcheck.load_index(folder, a.rows)
            prepcheck.check_rows(folder, table, a.rows, VOCAB)

        t_plain = best(plain)
        t_hash = best(lambda: prepcheck.verify_bytes(folder, meta))
        meta_b2 = {"integrity": prepcheck.digests(folder, "blake2b"), "rows": a.rows}
        t_b2 = best(lambda: prepcheck.verify_bytes(folder, meta_b2))
        t_checks = best(checks)
        print(
            f"{a.rows:,} rows, {tokens:,} tokens, {size / 2**20:,.0f} MiB on disk; cpus {os.cpu_count()}, "
            f"load {os.getloadavg()[0]:.1f}"
        )
        print("| step | seconds | x plain open |")
        print("|---|---|---|")
        for name, t in (
            ("plain open", t_plain),
            ("verify_bytes, xxh3-128 (used)", t_hash),
            ("verify_bytes, blake2b (the alternative)", t_b2),
            ("index + value checks", t_checks),
        ):
            print(f"| {name} | {t:.3f} | {t / t_plain:.1f} |")


if __name__ == "__main__":
    main()
