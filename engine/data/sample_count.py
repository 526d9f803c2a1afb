"""The sampler's counting pass: every line's stratum code and length, to scratch files.

Reads the file in blocks (``pieces``, no copy but of a line cut by a read's end), in one
process or in several over byte ranges of whole lines, merged as if read in one go.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from engine.data.sample_keys import SKIP, KeyReader

BLOCK = 1 << 20  # bytes read at a time; small blocks stay in the CPU cache


def pieces(f, size: int = BLOCK, limit: int | None = None):
    """Yield ``(data, start, stop)`` read from a binary file: ``data[start:stop]`` is whole lines.

    Each read is handed on as it is (no copy); only a line cut by a read's end is joined and
    comes alone. The last line of a file without a final newline comes alone, without one.
    With ``limit``, reads that many bytes from the current position and no more.
    """
    carry: list[bytes] = []
    left = limit if limit is not None else -1
    while left:
        data = f.read(size if left < 0 else min(size, left))
        if not data:
            break
        left -= len(data) if left > 0 else 0
        start = 0
        if carry:
            j = data.find(b"\n")
            if j < 0:  # a line longer than a read
                carry.append(data)
                continue
            carry.append(data[: j + 1])
            line = b"".join(carry)
            carry = []
            yield line, 0, len(line)
            start = j + 1
        end = data.rfind(b"\n") + 1
        if end > start:
            yield data, start, end
            start = end
        if start < len(data):
            carry.append(data[start:])
    if carry:
        line = b"".join(carry)
        yield line, 0, len(line)


def count_pass(src: Path, size: int, reader: KeyReader, scratch: Path, meter) -> int:
    """Codes and byte lengths (newline included) of every line, to two scratch files."""
    meter.start("pass 1/2 count ", size)
    with (
        open(scratch.with_suffix(".codes"), "wb") as codes_out,
        open(scratch.with_suffix(".lens"), "wb") as lens_out,
    ):
        lines = _count_range(src, 0, size, reader, codes_out, lens_out, meter.update)
    meter.update(size, final=True)
    return lines


def _count_range(src: Path, start: int, stop: int, reader: KeyReader, codes_out, lens_out, report) -> int:
    lines = done = 0
    with open(src, "rb", buffering=0) as f:
        f.seek(start)
        for data, a, b in pieces(f, limit=stop - start):
            codes, lengths = reader.codes(data, lines + 1, a, b)
            codes_out.write(codes.tobytes())
            lens_out.write(lengths)
            lines += len(codes)
            done += b - a
            report(done)
    return lines


_progress = None  # per-worker bytes done, shared with the parent (set in each worker)


def _init_worker(progress) -> None:
    global _progress
    _progress = progress


def _count_part(
    src: str, start: int, stop: int, key: str, fast: bool, part: str, slot: int, want_bad: bool, ends: bool
):
    """One worker's share of the counting pass: the lines that start in [start, stop)."""
    part_path = Path(part)
    bad_sink = open(part_path.with_suffix(".bad"), "w") if want_bad else None  # noqa: SIM115
    reader = KeyReader(key, fast=fast, bad_sink=bad_sink, ends=ends)

    def report(done: int) -> None:
        _progress[slot] = done

    try:
        with (
            open(part_path.with_suffix(".codes"), "wb") as co,
            open(part_path.with_suffix(".lens"), "wb") as lo,
        ):
            lines = _count_range(Path(src), start, stop, reader, co, lo, report)
    finally:
        if bad_sink is not None:
            bad_sink.close()
    return {
        "lines": lines,
        "labels": reader.labels,
        "blank": reader.blank,
        "bad": reader.bad,
        "bad_shown": reader.bad_shown,
    }


def _line_starts(src: Path, size: int, parts: int) -> list[int]:
    """Byte offsets that cut the file into about ``parts`` pieces of whole lines."""
    cuts = [0]
    with open(src, "rb") as f:
        for i in range(1, parts):
            at = max(size * i // parts, cuts[-1])
            if at == 0:
                continue
            f.seek(at - 1)
            while True:  # the first line that starts at or after `at`
                chunk = f.read(1 << 16)
                if not chunk:
                    at = size
                    break
                j = chunk.find(b"\n")
                if j >= 0:
                    at = f.tell() - len(chunk) + j + 1
                    break
            cuts.append(at)
    cuts.append(size)
    return sorted(set(cuts))


def count_parallel(
    src: Path, size: int, reader: KeyReader, scratch: Path, meter, jobs: int, fast: bool
) -> int:
    """The counting pass in ``jobs`` processes over byte ranges; merged as if read in one go."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    import numpy as np

    cuts = _line_starts(src, size, jobs)
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    progress = ctx.Array("q", len(cuts) - 1, lock=False)
    parts = [scratch.with_name(f"{scratch.stem}-p{i}.scratch") for i in range(len(cuts) - 1)]
    meter.start("pass 1/2 count ", size)
    try:
        with ProcessPoolExecutor(
            len(parts), mp_context=ctx, initializer=_init_worker, initargs=(progress,)
        ) as pool:
            futures = [
                pool.submit(
                    _count_part,
                    str(src),
                    a,
                    b,
                    reader.key,
                    fast,
                    str(p),
                    i,
                    reader.bad_sink is not None,
                    reader.tail is not None,
                )
                for i, (a, b, p) in enumerate(zip(cuts, cuts[1:], parts, strict=False))
            ]
            while True:
                done, pending = wait(futures, timeout=0.2, return_when=FIRST_EXCEPTION)
                meter.update(sum(progress))
                if not pending or any(f.exception() for f in done):
                    break
            results = [f.result() for f in futures]
        meter.update(size, final=True)
        lines = 0
        with (
            open(scratch.with_suffix(".codes"), "wb") as codes_out,
            open(scratch.with_suffix(".lens"), "wb") as lens_out,
        ):
            for part, res in zip(parts, results, strict=True):
                lut = np.full(SKIP + 1, SKIP, np.uint16)
                lut[: len(res["labels"])] = [reader.code_for_label(label) for label in res["labels"]]
                with open(part.with_suffix(".codes"), "rb") as f:
                    while chunk := f.read(1 << 22):
                        codes_out.write(lut[np.frombuffer(chunk, np.uint16)].tobytes())
                with open(part.with_suffix(".lens"), "rb") as f:
                    shutil.copyfileobj(f, lens_out, 1 << 22)
                reader.blank += res["blank"]
                reader.bad += res["bad"]
                room = 1000 - len(reader.bad_shown)
                reader.bad_shown += [(n + lines, why) for n, why in res["bad_shown"][:room]]
                if reader.bad_sink is not None:
                    with open(part.with_suffix(".bad")) as f:
                        for row in f:
                            n, why = row.split("\t", 1)
                            reader.bad_sink.write(f"{int(n) + lines}\t{why}")
                lines += res["lines"]
        return lines
    finally:
        for part in parts:
            for suffix in (".codes", ".lens", ".bad"):
                part.with_suffix(suffix).unlink(missing_ok=True)


def stratum_totals(scratch: Path, n: int) -> list[int]:
    import numpy as np

    totals = np.zeros(SKIP + 1, np.int64)
    with open(scratch.with_suffix(".codes"), "rb") as f:
        while chunk := f.read(1 << 21):
            totals += np.bincount(np.frombuffer(chunk, np.uint16), minlength=SKIP + 1)
    return [int(x) for x in totals[:n]]
