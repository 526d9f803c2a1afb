"""A stratified sample of a JSONL corpus, in two streaming passes (``leviathan-cockpit sample``).

    leviathan-cockpit sample IN -o OUT --fraction 0.1 --by _category --seed 42

Each stratum (a value of ``--by``; rows without the key form their own stratum) keeps
``round(fraction x its rows)`` rows, half rounded up (or, with ``--count N``, N rows shared
out by largest remainder). Kept lines are copied byte for byte, in input order. The same
input, key and seed give the same output.

Memory is bounded by the number of strata, not rows, so a 13 GB corpus samples on a small
machine:

1. The counting pass finds each line's stratum, counts rows per stratum, and writes one
   2-byte stratum code and one length per line to scratch files beside OUT. A line is read
   at its end (``TailKeys``): one that ends ``, "_category": "coding"}`` is a `coding` row
   without the rest being parsed. Any other line (blank, cut short, the key elsewhere or
   not a plain string, ...) is parsed in full, and a malformed one is reported by line
   number and left out.
2. The selection pass keeps, per stratum, a uniform random subset of exactly the target
   size: in fixed chunks of lines it draws how many of the stratum's still-needed rows fall
   in the chunk (a hypergeometric draw, the batched form of Knuth's selection sampling,
   algorithm S) and which ones, and copies them, read by offset. Only the counts per
   stratum are held.
3. Every kept line is then parsed in full. What the read at the end does not see (bad JSON
   or UTF-8 between a line's ends) is found here; if a kept line is malformed the run starts
   again with ``strict`` (every line parsed in full), so a malformed line is never written
   and the sample is the one ``strict`` gives. A malformed line that is not kept may stay
   counted in its stratum (``--strict`` reports every one).

For a file of well-formed rows both ways give the same bytes: in a line that is one JSON
object, a closing brace at its end closes the top-level object, so the member before it is
a top-level one, and the last of repeated keys is the one ``json`` keeps.

The output is written under a temporary name and renamed at the end: a failed or
interrupted run leaves no half file.

Speed: lines are read in binary, in blocks, and found with ``bytes.find``; a line's end is
one ``rfind`` and one dictionary look-up of the bytes from the key to the newline. A full
parse uses msgspec's ``decode_lines`` with a type that holds only the key, which validates
the whole JSON syntax while skipping every other value; what msgspec rejects is judged by
the standard ``json`` module (the one the trainer reads with). Lines with non-ASCII bytes
are checked to be UTF-8. Without msgspec installed, every full parse goes through ``json``.

The parts: ``sample_keys`` (the stratum of a line), ``sample_count`` (the counting pass),
``sample_select`` (sizes, the selection pass, the check of the kept lines); the command line
is ``engine.cli.sample_cli``. This module runs them in order and reports.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine.data.sample_count import count_parallel, count_pass, stratum_totals
from engine.data.sample_keys import MISSING, KeyReader
from engine.data.sample_select import Recount, Selector, select_pass, targets, verify_sample
from engine.errors import UserError

PARALLEL_MIN = 64 << 20  # smaller files are counted in one process
SHOW_BAD = 20


@dataclass
class Report:
    by: str
    counts: dict[str, int]
    kept: dict[str, int]
    lines: int = 0
    blank: int = 0
    bad: int = 0
    bad_shown: list[tuple[int, str]] = field(default_factory=list)
    output: str = ""
    seconds: float = 0.0
    bytes_in: int = 0
    recount: str = ""  # why the lines were counted again, parsed in full

    @property
    def by_missing_everywhere(self) -> bool:
        return bool(self.counts) and set(self.counts) == {MISSING}

    def table(self) -> str:
        total = sum(self.counts.values())
        kept = sum(self.kept.values())
        width = max([len(k) for k in self.counts] + [len(self.by), 5])
        out = [f"{self.by:<{width}}  {'rows':>12}  {'kept':>10}  {'share':>6}"]
        for name in sorted(self.counts, key=lambda k: (-self.counts[k], k)):
            n, k = self.counts[name], self.kept.get(name, 0)
            out.append(f"{name:<{width}}  {n:>12,}  {k:>10,}  {100 * k / max(kept, 1):5.1f}%")
        out.append(f"{'total':<{width}}  {total:>12,}  {kept:>10,}")
        extra = f"; {self.blank:,} blank" if self.blank else ""
        mbs = self.bytes_in / 2**20 / max(self.seconds, 1e-9)
        out.append(
            f"{self.lines:,} lines read, {self.bad:,} malformed left out{extra}; "
            f"wrote {self.output} in {self.seconds:.1f}s ({mbs:,.0f} MB/s of input, both passes)"
        )
        return "\n".join(out)

    def bad_summary(self) -> str:
        shown = "\n".join(f"  line {n}: {why}" for n, why in self.bad_shown[:SHOW_BAD])
        more = f"\n  ... and {self.bad - SHOW_BAD:,} more" if self.bad > SHOW_BAD else ""
        return f"{self.bad:,} malformed line(s) left out:\n{shown}{more}"


class _NoMeter:
    def start(self, label: str, total: int) -> None:
        pass

    def update(self, done: int, final: bool = False) -> None:
        pass


def sample_file(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    by: str = "_category",
    fraction: float | None = None,
    count: int | None = None,
    seed: int = 42,
    meter=None,
    bad_lines_path: str | None = None,
    fast: bool = True,
    jobs: int = 1,
    strict: bool = False,
) -> Report:
    """Write a stratified sample of ``src`` to ``dst``; see the module docstring.

    ``strict`` parses every line in full; otherwise lines are read at their ends and the kept
    ones parsed in full, and a malformed kept line starts the run again, strict.
    """
    src, dst = Path(src), Path(dst)
    _check_paths(src, dst, fraction, count)
    meter = meter or _NoMeter()
    args = (src, dst, by, fraction, count, seed, meter, bad_lines_path, fast, jobs)
    if strict:
        return _sample(*args, strict=True)
    t0 = time.perf_counter()
    try:
        return _sample(*args, strict=False)
    except Recount as e:
        report = _sample(*args, strict=True)
        report.recount = str(e)
        report.seconds = time.perf_counter() - t0  # both runs
        return report


def _sample(src, dst, by, fraction, count, seed, meter, bad_lines_path, fast, jobs, strict) -> Report:
    t0 = time.perf_counter()
    stat0 = src.stat()
    size = stat0.st_size
    scratch = dst.parent / f".{dst.name}.{os.getpid()}.scratch"  # .codes and .lens beside it
    tmp = scratch.with_suffix(".tmp")
    bad_sink = open(bad_lines_path, "w") if bad_lines_path else None  # noqa: SIM115
    try:
        reader = KeyReader(by, fast=fast, bad_sink=bad_sink, ends=not strict)
        if jobs > 1 and size >= PARALLEL_MIN:
            lines = count_parallel(src, size, reader, scratch, meter, jobs, fast)
        else:
            lines = count_pass(src, size, reader, scratch, meter)
        labels = reader.labels
        totals = stratum_totals(scratch, len(labels))
        counts = dict(zip(labels, totals, strict=True))
        good = sum(totals)
        if count is not None and count > good:
            raise UserError(
                f"--count {count:,} but {src} has {good:,} usable rows",
                f"ask for at most {good:,} rows, or use --fraction",
            )
        want_by_label = targets(counts, fraction, count)
        want = [want_by_label[label] for label in labels]
        select_pass(src, size, scratch, Selector(totals, want, labels, seed), tmp, meter)
        if not strict:
            verify_sample(tmp, scratch, by, labels, fast)
        stat1 = src.stat()
        if (stat1.st_size, stat1.st_mtime_ns) != (stat0.st_size, stat0.st_mtime_ns):
            raise UserError(
                f"{src} changed while it was being sampled", "run the sample again on a file at rest"
            )
        os.replace(tmp, dst)
    finally:
        for p in (tmp, *(scratch.with_suffix(x) for x in (".codes", ".lens", ".kept"))):
            p.unlink(missing_ok=True)
        if bad_sink is not None:
            bad_sink.close()
    kept = dict(zip(labels, want, strict=True))
    return Report(
        by=by,
        counts=counts,
        kept=kept,
        lines=lines,
        blank=reader.blank,
        bad=reader.bad,
        bad_shown=reader.bad_shown,
        output=str(dst),
        seconds=time.perf_counter() - t0,
        bytes_in=size,
    )


def _check_paths(src: Path, dst: Path, fraction, count) -> None:
    if fraction is not None and not 0 < fraction <= 1:
        raise UserError(f"--fraction {fraction} is out of range", "give a fraction above 0 and at most 1")
    if count is not None and count < 0:
        raise UserError(f"--count {count} is negative", "give a number of rows, 0 or more")
    if not src.is_file():
        raise UserError(f"{src}: no such file", "give the path of a JSONL file (stdin cannot be read twice)")
    if src.resolve() == dst.resolve() or (dst.exists() and os.path.samefile(src, dst)):
        raise UserError(f"IN and OUT are the same file ({src})", "write the sample to another path with -o")
    if not dst.parent.is_dir():
        raise UserError(f"{dst.parent}: no such folder for OUT", "create it first or choose another -o path")
    if dst.is_dir():
        raise UserError(
            f"-o {dst}: is a folder, not a file", f"give a file path, e.g. -o {dst / 'sample.jsonl'}"
        )
