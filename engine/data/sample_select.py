"""The sampler's sizes per stratum and its selection pass, then the check of what it kept.

``targets`` sizes each stratum; ``Selector`` draws, chunk by chunk of lines, exactly that
many of each, uniformly; ``select_pass`` copies them by offset; ``verify_sample`` parses
every kept line in full.
"""

from __future__ import annotations

import hashlib
import os
from fractions import Fraction
from pathlib import Path

from engine.data.sample_count import BLOCK, pieces
from engine.data.sample_keys import SKIP, KeyReader
from engine.errors import UserError

CHUNK = 1 << 16  # lines per selection chunk (fixed: the output depends on it)


class Recount(Exception):
    """A kept line that the read at its end took for a row is malformed."""


def targets(
    counts: dict[str, int], fraction: float | None = None, count: int | None = None
) -> dict[str, int]:
    """Rows to keep per stratum: round(fraction x n), half up; or N shared by largest remainder."""
    if fraction is not None:
        f = Fraction(str(fraction))
        return {k: int(f * n + Fraction(1, 2)) for k, n in counts.items()}
    assert count is not None
    total = sum(counts.values())
    quotas = {k: Fraction(count * n, total) for k, n in counts.items()} if total else {}
    out = {k: int(q) for k, q in quotas.items()}
    left = count - sum(out.values())
    for k in sorted(quotas, key=lambda k: (-(quotas[k] - out[k]), k))[:left]:
        out[k] += 1
    return out


def _stratum_rng(seed: int, label: str):
    import numpy as np

    digest = hashlib.sha256(label.encode("utf-8", "surrogatepass")).digest()
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, *digest[:16]])))


class Selector:
    """Which lines to keep, chunk by chunk of codes: exactly ``want[s]`` of stratum s, uniformly."""

    def __init__(self, totals: list[int], want: list[int], labels: list[str], seed: int) -> None:
        self.remaining = list(totals)
        self.needed = list(want)
        self.rngs = [_stratum_rng(seed, label) for label in labels]

    def chunk(self, codes):
        """Indices (within the chunk) of the lines to keep, sorted."""
        import numpy as np

        order = np.argsort(codes, kind="stable")
        sorted_codes = codes[order]
        values, first = np.unique(sorted_codes, return_index=True)
        bounds = list(first.tolist()) + [len(codes)]
        keep = []
        for j, s in enumerate(values.tolist()):
            if s == SKIP:
                continue
            here = bounds[j + 1] - bounds[j]
            need, left = self.needed[s], self.remaining[s]
            if need == 0:
                take = 0
            elif need >= left:
                take = here
            else:
                take = int(self.rngs[s].hypergeometric(here, left - here, need))
            if take:
                members = order[bounds[j] : bounds[j + 1]]
                if take < here:
                    members = members[self.rngs[s].choice(here, size=take, replace=False)]
                keep.append(members)
            self.needed[s] -= take
            self.remaining[s] -= here
        if not keep:
            return np.empty(0, np.int64)
        return np.sort(np.concatenate(keep))


def select_pass(src: Path, size: int, scratch: Path, selector: Selector, tmp: Path, meter) -> None:
    """Copy the chosen lines, read by offset (``os.pread``) in runs of nearby lines.

    Beside the sample, ``.kept`` gets each kept line's stratum code (uint16) and line number
    (int64), for ``verify_sample``.
    """
    import numpy as np

    meter.start("pass 2/2 select", size)
    fd = os.open(src, os.O_RDONLY)
    try:
        with open(tmp, "wb", buffering=BLOCK) as out, open(scratch.with_suffix(".kept"), "wb") as kept:
            for offsets, lengths, codes, linenos in _chosen_lines(scratch, selector):
                kept.write(np.stack([codes.astype(np.int64), linenos]).T.tobytes())
                for lo, hi, cuts in _runs(offsets, lengths):
                    data = os.pread(fd, hi - lo, lo)
                    if hi > size:  # the file's unterminated last line
                        data += b"\n"
                    if len(data) != hi - lo or any(data[e - 1] != 10 for _, e in cuts or [(0, len(data))]):
                        raise UserError(
                            f"{src} changed while it was being sampled", "run again on a file at rest"
                        )
                    if cuts is None:
                        out.write(data)
                    else:
                        with memoryview(data) as view:
                            for a, b in cuts:
                                out.write(view[a:b])
                    meter.update(hi)
            out.flush()
            os.fsync(out.fileno())
    finally:
        os.close(fd)
    meter.update(size, final=True)


def _runs(offsets, lengths, gap: int = 8192):
    """(lo, hi, cuts) per run of kept lines read with one call: lines less than ``gap`` bytes
    apart and within one BLOCK-aligned stretch of the file (a longer line alone). ``cuts`` are
    the lines' (start, end) within the run, or None when they fill it."""
    import numpy as np

    if not len(offsets):
        return
    ends = offsets + lengths
    brk = (offsets[1:] - ends[:-1] > gap) | (offsets[1:] // BLOCK != ends[:-1] // BLOCK)
    bounds = [0, *(np.flatnonzero(brk) + 1).tolist(), len(offsets)]
    off, end = offsets.tolist(), ends.tolist()
    for i, j in zip(bounds, bounds[1:], strict=False):
        lo, hi = off[i], end[j - 1]
        if j - i == 1 or sum(end[i:j]) - sum(off[i:j]) == hi - lo:
            yield lo, hi, None
        else:
            yield lo, hi, [(o - lo, e - lo) for o, e in zip(off[i:j], end[i:j], strict=True)]


def verify_sample(tmp: Path, scratch: Path, key: str, labels: list[str], fast: bool) -> None:
    """Parse every line of the written sample in full; ``Recount`` if one is malformed or of
    another stratum than the read at its ends said."""
    import numpy as np

    reader = KeyReader(key, fast=fast)
    for label in labels:  # the same codes as the counting pass's
        reader.code_for_label(label)
    done = 0
    with open(tmp, "rb", buffering=0) as f, open(scratch.with_suffix(".kept"), "rb") as kept:
        for data, a, b in pieces(f):
            got, _ = reader.codes(data, done + 1, a, b)
            want = np.frombuffer(kept.read(16 * len(got)), np.int64).reshape(-1, 2)
            wrong = np.flatnonzero(np.frombuffer(got, np.uint16) != want[:, 0])
            if len(wrong):
                i = int(wrong[0])
                why = dict(reader.bad_shown).get(done + 1 + i, f"`{key}` is not the value at the line's end")
                raise Recount(f"line {int(want[i, 1])}: {why}")
            done += len(got)


def _chosen_lines(scratch: Path, selector: Selector):
    """(byte offsets, byte lengths, codes, line numbers) of the kept lines, one chunk at a time."""
    import numpy as np

    base = first = 0
    with open(scratch.with_suffix(".codes"), "rb") as fc, open(scratch.with_suffix(".lens"), "rb") as fl:
        while chunk := fc.read(CHUNK * 2):
            codes = np.frombuffer(chunk, np.uint16)
            lengths = np.frombuffer(fl.read(CHUNK * 4), np.uint32).astype(np.int64)
            ends = base + np.cumsum(lengths)
            keep = selector.chunk(codes)
            yield ends[keep] - lengths[keep], lengths[keep], codes[keep], keep + (first + 1)
            base = int(ends[-1])
            first += len(codes)
