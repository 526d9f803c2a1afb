"""The prepared data verified on read: checksums recorded at write, checked on every open.

A committed preparation (``engine.data.prepcache``) is read back on every start and resume
without a tokenizer call, so damage to its bytes (a flipped bit, a zeroed block, a truncated
copy, a hand edit) would otherwise train silently on wrong rows or fail mid-run. At write, each
file gets an xxh3-128 digest per ``CHUNK`` bytes (xxhash: a dependency of ``datasets``; several
times faster than blake2b, and this guards against damage, not an attacker), kept in
``meta.json``; on open every file is hashed again (the cost at 100k rows is in
benchmarks/prepcheck_cost.py) and the index files and
rows are checked for what the reader relies on: dtypes, bounds, ids below the tokenizer's
vocabulary, mask values 0 or 1. Any mismatch raises ``Damaged`` naming the file; the caller
rebuilds (``engine.data.prepare``) or says so (``check``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import xxhash

CHUNK = 8 << 20
INDEX = ("train_rows", "val_rows", "train_order", "train_bounds", "val_order", "val_bounds")
DTYPES = {"rows": np.int32, "order": np.int32, "bounds": np.int64}
FILES = ("rows.arrow", *(f"{n}.npy" for n in INDEX))


class Damaged(Exception):
    """A prepared file does not hold what was written: ``path`` and what is wrong."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(f"{path}: {why}")
        self.path, self.why = path, why


ALGOS = {
    "xxh3_128": lambda b: xxhash.xxh3_128(b).hexdigest(),
    "blake2b": lambda b: hashlib.blake2b(b).hexdigest(),
}
ALGO = "xxh3_128"


def _chunks(path: Path, algo: str = ALGO) -> tuple[int, list[str]]:
    digest, size, out = ALGOS[algo], 0, []
    buf = bytearray(CHUNK)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            out.append(digest(memoryview(buf)[:n]))
            size += n
    return size, out


def digests(folder: Path, algo: str = ALGO) -> dict:
    """What ``meta.json`` records of each file: its size and per-chunk digests."""
    out = {}
    for name in FILES:
        size, chunks = _chunks(folder / name, algo)
        out[name] = {"size": size, "chunk": CHUNK, "algo": algo, "digests": chunks}
    return out


def verify_bytes(folder: Path, meta: dict) -> None:
    """Every file is there, of its size, with its digests."""
    record = meta.get("integrity")
    if not isinstance(record, dict):
        raise Damaged(folder / "meta.json", "no checksums recorded")
    for name in FILES:
        path, want = folder / name, record.get(name)
        if not isinstance(want, dict) or want.get("chunk") != CHUNK or want.get("algo") not in ALGOS:
            raise Damaged(folder / "meta.json", f"no checksum recorded for {name}")
        try:
            size, chunks = _chunks(path, want["algo"])
        except OSError as e:
            raise Damaged(path, f"cannot be read ({e.strerror or e})") from None
        if size != want["size"]:
            raise Damaged(path, f"{size:,} bytes, {want['size']:,} were written (truncated or replaced)")
        bad = [i for i, (a, b) in enumerate(zip(chunks, want["digests"], strict=False)) if a != b]
        if bad:
            raise Damaged(path, f"checksum mismatch in bytes {bad[0] * CHUNK:,}..{(bad[0] + 1) * CHUNK:,}")


def load_index(folder: Path, rows: int) -> dict[str, np.ndarray]:
    """The index files, memory-mapped, each checked for dtype and bounds against ``rows``."""
    index = {}
    for name in INDEX:
        path = folder / f"{name}.npy"
        try:
            arr = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise Damaged(path, f"not a readable .npy file ({e})") from None
        want = DTYPES[name.split("_")[1]]
        if arr.dtype != want or arr.ndim != 1:
            raise Damaged(path, f"{arr.dtype} of {arr.ndim} dimension(s), expected 1-D {np.dtype(want)}")
        index[name] = arr
    for part in ("train", "val"):
        _check_part(folder, part, index, rows)
    if len(index["train_rows"]) + len(index["val_rows"]) != rows:
        raise Damaged(folder / "train_rows.npy", f"train and val rows do not add up to the {rows:,} rows")
    return index


def _check_part(folder: Path, part: str, index: dict, rows: int) -> None:
    for name in (f"{part}_rows", f"{part}_order"):
        arr = index[name]
        if len(arr) and (int(arr.min()) < 0 or int(arr.max()) >= rows):
            raise Damaged(folder / f"{name}.npy", f"row numbers outside 0..{rows - 1}")
    bounds, order = index[f"{part}_bounds"], index[f"{part}_order"]
    if not len(bounds) or bounds[0] != 0 or bounds[-1] != len(order) or np.any(np.diff(bounds) <= 0):
        raise Damaged(folder / f"{part}_bounds.npy", "sequence bounds do not cut the packed order")


def check_rows(folder: Path, table, rows: int, vocab: int | None) -> None:
    """The rows table: its shape, ids in the vocabulary, mask values 0 or 1."""
    path = folder / "rows.arrow"
    if table.num_rows != rows:
        raise Damaged(path, f"{table.num_rows:,} rows, meta.json says {rows:,}")
    ids, mask = table.column("input_ids").chunks, table.column("mask").chunks
    for i, m in zip(ids, mask, strict=True):
        v, mv = i.values.to_numpy(), m.values.to_numpy()
        if len(v) != len(mv) or not np.array_equal(i.offsets.to_numpy(), m.offsets.to_numpy()):
            raise Damaged(path, "ids and mask of a row differ in length")
        if len(v) and (int(v.min()) < 0 or (vocab is not None and int(v.max()) >= vocab)):
            raise Damaged(path, f"token ids outside the tokenizer's vocabulary (0..{(vocab or 0) - 1})")
        if len(mv) and (int(mv.min()) < 0 or int(mv.max()) > 1):
            raise Damaged(path, "mask values other than 0 and 1")
