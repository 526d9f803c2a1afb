"""``leviathan-cockpit sample``: a stratified sample of a JSONL corpus, in two streaming passes.

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
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import operator
import os
import re
import shutil
import sys
import time
from array import array
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from engine.errors import UserError

BLOCK = 1 << 20  # bytes read at a time; small blocks stay in the CPU cache
CHUNK = 1 << 16  # lines per selection chunk (fixed: the output depends on it)
SKIP = 0xFFFF  # stratum code of a blank or malformed line
MAX_STRATA = SKIP  # codes 0 .. 65534
MISSING = "(missing)"
PARALLEL_MIN = 64 << 20  # smaller files are counted in one process
SHOW_BAD = 20


def add_sample_args(p) -> None:
    p.add_argument("input", metavar="IN", help="a JSONL file (one JSON object a line)")
    p.add_argument("-o", "--output", metavar="OUT", required=True, help="where the sample goes (JSONL)")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument(
        "--fraction", type=float, metavar="F", help="keep this fraction of every stratum (0 < F <= 1)"
    )
    size.add_argument("--count", type=int, metavar="N", help="keep N rows in all, shared out in proportion")
    p.add_argument(
        "--by", default="_category", metavar="KEY", help="top-level key to stratify by (default _category)"
    )
    p.add_argument("--seed", type=int, default=42, metavar="N", help="random seed (default 42)")
    p.add_argument(
        "--jobs",
        type=int,
        default=min(os.cpu_count() or 1, 8),
        metavar="N",
        help="processes for the counting pass (default: the cores, at most 8)",
    )
    p.add_argument(
        "--bad-lines", metavar="FILE", help="also write every malformed line number and reason to FILE"
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="parse every row in full (slower); by default a row is read at its ends and the kept "
        "rows in full, which finds every malformed row that could be kept but may count one that is "
        "not kept in its stratum",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def sample_main(args) -> int:
    meter = None if args.no_progress else Meter(sys.stderr)
    report = sample_file(
        args.input,
        args.output,
        by=args.by,
        fraction=args.fraction,
        count=args.count,
        seed=args.seed,
        meter=meter,
        bad_lines_path=args.bad_lines,
        jobs=max(1, args.jobs),
        strict=args.strict,
    )
    if report.recount:
        print(f"counted again, every row parsed in full: {report.recount}", file=sys.stderr)
    print(report.table())
    if report.bad:
        print(report.bad_summary(), file=sys.stderr)
    if report.by_missing_everywhere:
        print(
            f"warning: no row has the key `{args.by}`; the sample is a plain random sample "
            f"(check the spelling of --by)",
            file=sys.stderr,
        )
    return 0


# ---- result ---------------------------------------------------------------------------------


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


# ---- progress -------------------------------------------------------------------------------


class Meter:
    """A progress bar with MB/s on a stream; a line every few seconds when it is not a tty."""

    def __init__(self, stream, every_s: float | None = None) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.every_s = every_s if every_s is not None else (0.2 if self.tty else 10.0)
        self.label, self.total, self.t0, self._last = "", 0, 0.0, 0.0

    def start(self, label: str, total: int) -> None:
        self.label, self.total, self.t0, self._last = label, total, time.perf_counter(), 0.0

    def update(self, done: int, final: bool = False) -> None:
        now = time.perf_counter()
        if not final and now - self._last < self.every_s:
            return
        self._last = now
        dt = max(now - self.t0, 1e-9)
        frac = done / self.total if self.total else 1.0
        rate = done / 2**20 / dt
        eta = (self.total - done) / 2**20 / rate if rate > 0 else 0.0
        bar = "#" * int(24 * frac) + "-" * (24 - int(24 * frac))
        line = (
            f"{self.label} [{bar}] {100 * frac:5.1f}% {done / 2**30:.2f}/{self.total / 2**30:.2f} GiB "
            f"{rate:,.0f} MB/s eta {int(eta) // 60}:{int(eta) % 60:02d}"
        )
        if self.tty:
            self.stream.write("\r\x1b[2K" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


class _NoMeter:
    def start(self, label: str, total: int) -> None:
        pass

    def update(self, done: int, final: bool = False) -> None:
        pass


# ---- reading ---------------------------------------------------------------------------------


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


def split_lines(block: bytes) -> list[bytes]:
    """The lines of a block, without their newlines (an unterminated last piece is a line)."""
    lines = block.split(b"\n")
    if block.endswith(b"\n"):
        lines.pop()
    return lines


# ---- the key of each line ----------------------------------------------------------------------


class KeyReader:
    """Stratum codes for the lines of a block; malformed and blank lines get SKIP."""

    def __init__(self, key: str, fast: bool = True, bad_sink=None, ends: bool = False) -> None:
        self.key = key
        self.labels: list[str] = []  # code -> label
        self._by_label: dict[str, int] = {}
        self._by_raw: dict[bytes, int] = {}
        self.blank = 0
        self.bad = 0
        self.bad_shown: list[tuple[int, str]] = []
        self.bad_sink = bad_sink
        self._mask = self._mask2 = ()  # scratch for the newline scan, grown to the block size
        self.decoder = None
        self.tail = TailKeys(self) if ends else None
        if fast:
            try:
                import msgspec
            except ImportError:
                msgspec = None
            if msgspec is not None:
                self._msgspec = msgspec
                kind = msgspec.defstruct(
                    "KeyOnly", [("value", msgspec.Raw, msgspec.Raw(b""))], rename={"value": key}
                )
                self.decoder = msgspec.json.Decoder(kind)

    # -- strata --

    def _code_for_label(self, label: str) -> int:
        code = self._by_label.get(label)
        if code is None:
            code = len(self.labels)
            if code >= MAX_STRATA:
                raise UserError(
                    f"`{self.key}` has more than {MAX_STRATA:,} distinct values",
                    "stratify by a categorical key (memory is bounded by the number of strata)",
                )
            self.labels.append(label)
            self._by_label[label] = code
        return code

    def _code_for_raw(self, raw: bytes) -> int:
        code = self._by_raw.get(raw)
        if code is None:
            if not raw:
                label = MISSING
            elif raw[:1] == b'"' and b"\\" not in raw:
                label = raw[1:-1].decode("utf-8", "surrogatepass")
            else:
                label = _label(json.loads(raw))
            code = self._code_for_label(label)
            self._by_raw[raw] = code
        return code

    def _bad(self, lineno: int, why: str) -> None:
        self.bad += 1
        if len(self.bad_shown) < 1000:
            self.bad_shown.append((lineno, why))
        if self.bad_sink is not None:
            self.bad_sink.write(f"{lineno}\t{why}\n")

    # -- blocks --

    def codes(
        self, data: bytes, first_line: int, start: int = 0, stop: int | None = None
    ) -> tuple[array, bytes]:
        """Stratum codes (array of uint16) and byte lengths (uint32 bytes) of the lines in
        ``data[start:stop]``.

        A final unterminated piece counts as a line; a length includes the line's newline
        (the unterminated piece is counted as if it had one).
        """
        import numpy as np

        stop = len(data) if stop is None else stop
        if self.tail is not None:
            return self.tail.codes(data, first_line, start, stop)
        block = data if (start, stop) == (0, len(data)) else data[start:stop]
        a = np.frombuffer(block, np.uint8)
        if len(self._mask) < len(a):
            self._mask = np.empty(len(a), bool)
            self._mask2 = np.empty(len(a), bool)
        mask = np.equal(a, 10, out=self._mask[: len(a)])
        high = None
        if block.isascii():
            ends = np.flatnonzero(mask)
        else:  # newlines and bytes >= 0x80 in one scan
            np.bitwise_or(mask, np.greater_equal(a, 0x80, out=self._mask2[: len(a)]), out=mask)
            hits = np.flatnonzero(mask)
            newline = a[hits] == 10
            ends, high = hits[newline], hits[~newline]
        unterminated = not len(ends) or ends[-1] != len(a) - 1
        if unterminated:
            ends = np.append(ends, len(a))
        lengths = np.diff(ends, prepend=-1).astype(np.uint32).tobytes()
        if self.decoder is not None and not unterminated:
            out = self._fast(block, a, ends, high)
            if out is not None:
                return out, lengths
        lines = split_lines(block)
        code = self.line_code
        return array("H", [code(line, first_line + i) for i, line in enumerate(lines)]), lengths

    def _fast(self, block: bytes, a, ends, high) -> array | None:
        """All the block's codes from one ``decode_lines`` call, or None to go line by line.

        Taken only when every line starts with ``{`` and ends with ``}`` (before an optional
        CR): then no JSON value can run from one line into the next (after a closing ``}``
        inside a value only ``,``, ``]`` or ``}`` may follow, never ``{``), so as many values
        as lines means each line is one valid object.
        """

        if a[0] != 123 or not (a[ends[:-1] + 1] == 123).all():
            return None  # a blank line, or one that does not start with `{`
        last = a[ends - 1]
        if not (last == 125).all():
            cr = last == 13
            if not (last[~cr] == 125).all() or (ends[cr] < 2).any() or not (a[ends[cr] - 2] == 125).all():
                return None
        if high is not None and not utf8_ok(a, high):
            return None
        try:
            values = self.decoder.decode_lines(block)
        except (self._msgspec.DecodeError, RecursionError):
            return None
        if len(values) != len(ends):
            return None  # two values on one line
        get = self._by_raw.get
        codes = [get(bytes(v.value)) for v in values]
        if None in codes:
            codes = [self._code_for_raw(bytes(v.value)) for v in values]
        return array("H", codes)

    def line_code(self, line: bytes, lineno: int) -> int:
        """The stratum code of one line (without its newline), or SKIP."""
        if not line.strip():
            self.blank += 1
            return SKIP
        if self.decoder is not None:
            try:
                raw = bytes(self.decoder.decode(line).value)
            except (self._msgspec.DecodeError, RecursionError):
                pass  # msgspec is stricter than json in places (NaN, a BOM): let json judge
            else:
                if not line.isascii():
                    try:
                        line.decode("utf-8", "surrogatepass")
                    except UnicodeDecodeError as e:
                        self._bad(lineno, f"not UTF-8 (byte {e.start})")
                        return SKIP
                return self._code_for_raw(raw)
        try:
            obj = json.loads(line)
        except UnicodeDecodeError as e:
            self._bad(lineno, f"not UTF-8 (byte {e.start})")
            return SKIP
        except json.JSONDecodeError as e:
            self._bad(lineno, f"bad JSON ({e.msg}, column {e.colno})")
            return SKIP
        except (ValueError, RecursionError) as e:
            self._bad(lineno, f"bad JSON ({type(e).__name__})")
            return SKIP
        if not isinstance(obj, dict):
            self._bad(lineno, f"not a JSON object (a {type(obj).__name__})")
            return SKIP
        return self._code_for_label(_label(obj[self.key]) if self.key in obj else MISSING)


_SHORT_ESCAPES = {
    '"': b'\\"',
    "\\": b"\\\\",
    "/": b"\\/",
    "\b": b"\\b",
    "\f": b"\\f",
    "\n": b"\\n",
    "\r": b"\\r",
    "\t": b"\\t",
}


class TailKeys:
    """Stratum codes read from the end of each line, without parsing the rest of it.

    A line that ends ``, "KEY": "VALUE"}`` (JSON whitespace allowed around the tokens, VALUE
    without backslashes or control characters) has VALUE as its stratum when the line is one
    JSON object: the closing brace then closes the top-level object, so the member before it
    is a top-level member, and the last of duplicate keys is the one ``json`` keeps. A line
    without the key's bytes anywhere and no ``\\u`` escape (which could spell the key) is
    ``(missing)``. Every other line (blank, cut short, the key elsewhere, a number as
    value, ...) is parsed in full as before, so it is reported and left out.

    What is not checked is the bytes between the ends (JSON syntax, UTF-8); ``sample_file``
    therefore parses every kept line in full and counts again, parsing every line, if one is
    malformed.
    """

    TAIL = 64  # the key is looked for in a line's last TAIL bytes, then WINDOW bytes
    WINDOW = 512

    def __init__(self, reader: KeyReader) -> None:
        self.reader = reader
        self.key = json.dumps(reader.key, ensure_ascii=False).encode()
        self._suffix: dict[bytes, int] = {}  # the bytes from 2 before the key to the line end
        # escapes that could spell the key another way (`\\/` is `/`; `\\u` is any character)
        self._escapes = [b"\\u"] + [e for c, e in _SHORT_ESCAPES.items() if c in reader.key]
        ws = rb"[ \t\r]*"
        self._re = re.compile(
            rb"(?:[\s\S],|,[ \t\r])"
            + re.escape(self.key)
            + ws
            + b":"
            + ws
            + rb'("[^"\\\x00-\x1f]*")'
            + ws
            + rb"\}"
            + ws
        )

    def codes(self, block: bytes, first_line: int, start: int, stop: int) -> tuple[array, bytes]:
        """Like ``KeyReader.codes``."""
        ends = []
        find, add = block.find, ends.append
        e = find(b"\n", start, stop)
        while e >= 0:
            add(e)
            e = find(b"\n", e + 1, stop)
        if (ends[-1] + 1 if ends else start) < stop:
            add(stop)  # the file's last line, unterminated
        rfind, get, key, tail = block.rfind, self._suffix.get, self.key, self.TAIL
        # A hit is a known suffix, which holds no newline: a key found in an earlier line
        # (or none, k = -1: at most 3 bytes) never hits.
        codes = [get(block[rfind(key, e - tail, e) - 2 : e]) for e in ends]
        if None in codes:
            for i, code in enumerate(codes):
                if code is None:
                    s, e = ends[i - 1] + 1 if i else start, ends[i]
                    k = rfind(key, max(s, e - self.WINDOW), e)
                    codes[i] = self._miss(block, s, k, e, first_line + i)
        return array("H", codes), _lengths(ends, start)

    def _miss(self, block: bytes, s: int, k: int, e: int, lineno: int) -> int:
        reader = self.reader
        if k - 2 >= s:
            m = self._re.fullmatch(block, k - 2, e)
            if m is not None:
                try:
                    code = reader._code_for_raw(m.group(1))
                except UnicodeDecodeError:
                    return reader.line_code(block[s:e], lineno)
                self._suffix[block[k - 2 : e]] = code
                return code
        line = block[s:e]
        if k < 0 and self.key not in line and not any(esc in line for esc in self._escapes):
            body = line.strip(b" \t\r")
            if body[:1] == b"{" and body[-1:] == b"}":
                return reader._code_for_label(MISSING)
        return reader.line_code(line, lineno)


def _lengths(ends: list[int], start: int) -> bytes:
    """uint32 line lengths, newline included, from the newline offsets of lines from ``start``."""
    return array("I", map(operator.sub, ends, itertools.chain((start - 1,), ends))).tobytes()


def _label(value) -> str:
    """The stratum name of a key's value: strings as they are, anything else as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


@functools.cache
def _utf8_tables():
    import numpy as np

    # Per byte value: a lead byte's sequence length, 1 for a continuation, 0 for never valid.
    length = np.zeros(256, np.int8)
    length[0x80:0xC0] = 1
    length[0xC2:0xE0] = 2
    length[0xE0:0xF0] = 3
    length[0xF0:0xF5] = 4
    # The allowed range of the byte after each lead (80-BF unless said here). ED A0-BF
    # (surrogates) stays allowed, as Python's "surrogatepass" decoder allows it.
    lo = np.full(256, 0x80, np.uint8)
    hi = np.full(256, 0xBF, np.uint8)
    lo[0xE0], lo[0xF0], hi[0xF4] = 0xA0, 0x90, 0x8F
    return length, lo, hi


def utf8_ok(a, hi=None) -> bool:
    """Whether a uint8 array is UTF-8 as Python decodes it with errors="surrogatepass".

    The json module reads bytes that way; only the bytes >= 0x80 (at positions ``hi``, found
    here when not given) are looked at.
    """
    import numpy as np

    _LEN, _LO, _HI = _utf8_tables()
    if hi is None:
        hi = np.flatnonzero(a >= 0x80)
    if not len(hi):
        return True
    v = a[hi]
    kind = _LEN[v]
    if not kind.all():
        return False
    lead = kind >= 2
    k = np.flatnonzero(lead)
    need = kind[k].astype(np.int64) - 1
    # every continuation byte is claimed by exactly one lead before it, contiguously
    if int(need.sum()) != len(hi) - len(k):
        return False
    last = k + need
    if len(last) and last[-1] >= len(hi):
        return False
    for j in (1, 2, 3):
        sel = need >= j
        if not sel.any():
            break
        kk = k[sel]
        if not ((hi[kk + j] == hi[kk] + j).all() and (kind[kk + j] == 1).all()):
            return False
    second = v[k[need >= 1] + 1] if len(k) else v[:0]
    lv = v[k]
    return bool(((second >= _LO[lv]) & (second <= _HI[lv])).all())


# ---- sizes per stratum ----------------------------------------------------------------------


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


# ---- the two passes ----------------------------------------------------------------------------


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
    try:
        return _sample(*args, strict=False)
    except _Recount as e:
        report = _sample(*args, strict=True)
        report.recount = str(e)
        return report


class _Recount(Exception):
    """A kept line that the read at its ends took for a row is malformed."""


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
            lines = _count_parallel(src, size, reader, scratch, meter, jobs, fast)
        else:
            lines = _count_pass(src, size, reader, scratch, meter)
        labels = reader.labels
        totals = _totals(scratch, len(labels))
        counts = dict(zip(labels, totals, strict=True))
        good = sum(totals)
        if count is not None and count > good:
            raise UserError(
                f"--count {count:,} but {src} has {good:,} usable rows",
                f"ask for at most {good:,} rows, or use --fraction",
            )
        want_by_label = targets(counts, fraction, count)
        want = [want_by_label[label] for label in labels]
        _select_pass(src, size, scratch, Selector(totals, want, labels, seed), tmp, meter)
        if not strict:
            _verify_sample(tmp, scratch, by, labels, fast)
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


def _count_pass(src: Path, size: int, reader: KeyReader, scratch: Path, meter) -> int:
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


def _count_parallel(
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
                lut[: len(res["labels"])] = [reader._code_for_label(label) for label in res["labels"]]
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


def _totals(scratch: Path, n: int) -> list[int]:
    import numpy as np

    totals = np.zeros(SKIP + 1, np.int64)
    with open(scratch.with_suffix(".codes"), "rb") as f:
        while chunk := f.read(CHUNK * 2 * 16):
            totals += np.bincount(np.frombuffer(chunk, np.uint16), minlength=SKIP + 1)
    return [int(x) for x in totals[:n]]


def _select_pass(src: Path, size: int, scratch: Path, selector: Selector, tmp: Path, meter) -> None:
    """Copy the chosen lines, read by offset (``os.pread``) in runs of nearby lines.

    Beside the sample, ``.kept`` gets each kept line's stratum code (uint16) and line number
    (int64), for ``_verify_sample``.
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


def _verify_sample(tmp: Path, scratch: Path, key: str, labels: list[str], fast: bool) -> None:
    """Parse every line of the written sample in full; ``_Recount`` if one is malformed or of
    another stratum than the read at its ends said."""
    import numpy as np

    reader = KeyReader(key, fast=fast)
    for label in labels:  # the same codes as the counting pass's
        reader._code_for_label(label)
    done = 0
    with open(tmp, "rb", buffering=0) as f, open(scratch.with_suffix(".kept"), "rb") as kept:
        for data, a, b in pieces(f):
            got, _ = reader.codes(data, done + 1, a, b)
            want = np.frombuffer(kept.read(16 * len(got)), np.int64).reshape(-1, 2)
            wrong = np.flatnonzero(np.frombuffer(got, np.uint16) != want[:, 0])
            if len(wrong):
                i = int(wrong[0])
                why = dict(reader.bad_shown).get(done + 1 + i, f"`{key}` is not the value at the line's end")
                raise _Recount(f"line {int(want[i, 1])}: {why}")
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
