"""Benchmark: what recording and verifying checkpoint checksums costs at the guide's sizes.

    python benchmarks/checkpoint_checksum.py --dir /path/on/the/checkpoint/disk

Writes a checkpoint-shaped folder (a 500 MB adapter_model.safetensors and a 1 GB optimizer.pt
of random bytes: LoRA weights plus two Adam moments), as a save does (write, fsync), then times
``checkpoints.mark_complete`` (the fsync of every file plus the SHA-256 of each, read back from
the page cache) and ``checkpoints.verify`` (what a resume reads). The load average is printed:
on a shared machine the numbers move with it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from engine.run import checkpoints

MB = 1 << 20


def write(path: Path, size: int) -> float:
    t0 = time.perf_counter()
    block = os.urandom(8 * MB)
    with open(path, "wb") as f:
        for _ in range(size // len(block)):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dir", default=None, help="a folder on the disk to measure (default: a temp folder)")
    p.add_argument("--adapter-mb", type=int, default=512)
    p.add_argument("--optimizer-mb", type=int, default=1024)
    a = p.parse_args()
    root = Path(tempfile.mkdtemp(dir=a.dir))
    try:
        folder = root / "checkpoint-1000"
        checkpoints.begin_save(folder)
        t_write = write(folder / "adapter_model.safetensors", a.adapter_mb * MB)
        t_write += write(folder / "optimizer.pt", a.optimizer_mb * MB)
        t0 = time.perf_counter()
        checkpoints.mark_complete(folder, {"step": 1000})
        t_mark = time.perf_counter() - t0
        ckpt = checkpoints.latest(root)
        t0 = time.perf_counter()
        problems = checkpoints.verify(ckpt)
        t_verify = time.perf_counter() - t0
        total = (a.adapter_mb + a.optimizer_mb) * MB
        print(f"files: {total / MB:,.0f} MB in {folder} (load average {os.getloadavg()[0]:.1f})")
        print(f"write + fsync (the save itself):        {t_write:6.2f} s  ({total / MB / t_write:,.0f} MB/s)")
        print(f"mark_complete (fsync + SHA-256 of all): {t_mark:6.2f} s  ({total / MB / t_mark:,.0f} MB/s)")
        print(
            f"verify on resume (SHA-256 of all):      {t_verify:6.2f} s  ({total / MB / t_verify:,.0f} MB/s)"
        )
        assert problems == []
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
