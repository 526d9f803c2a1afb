"""The stratum of each line of a JSONL corpus, as 2-byte codes: read at the line's end, or parsed.

``KeyReader`` gives the codes of a block of lines: a full parse (msgspec's ``decode_lines``
with a type that holds only the key, or ``json`` line by line) that reports malformed lines;
``TailKeys`` reads a line's stratum from its last bytes and parses only what it cannot read
there. Stdlib, numpy and (optionally) msgspec; imported by the sampler's passes.
"""

from __future__ import annotations

import functools
import itertools
import json
import operator
import re
from array import array

from engine.errors import UserError

SKIP = 0xFFFF  # stratum code of a blank or malformed line
MAX_STRATA = SKIP  # codes 0 .. 65534
MISSING = "(missing)"


def split_lines(block: bytes) -> list[bytes]:
    """The lines of a block, without their newlines (an unterminated last piece is a line)."""
    lines = block.split(b"\n")
    if block.endswith(b"\n"):
        lines.pop()
    return lines


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

    def code_for_label(self, label: str) -> int:
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

    def code_for_raw(self, raw: bytes) -> int:
        code = self._by_raw.get(raw)
        if code is None:
            if not raw:
                label = MISSING
            elif raw[:1] == b'"' and b"\\" not in raw:
                label = raw[1:-1].decode("utf-8", "surrogatepass")
            else:
                label = stratum_name(json.loads(raw))
            code = self.code_for_label(label)
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
            codes = [self.code_for_raw(bytes(v.value)) for v in values]
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
                return self.code_for_raw(raw)
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
        return self.code_for_label(stratum_name(obj[self.key]) if self.key in obj else MISSING)


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
                    code = reader.code_for_raw(m.group(1))
                except UnicodeDecodeError:
                    return reader.line_code(block[s:e], lineno)
                self._suffix[block[k - 2 : e]] = code
                return code
        line = block[s:e]
        if k < 0 and self.key not in line and not any(esc in line for esc in self._escapes):
            body = line.strip(b" \t\r")
            if body[:1] == b"{" and body[-1:] == b"}":
                return reader.code_for_label(MISSING)
        return reader.line_code(line, lineno)


def _lengths(ends: list[int], start: int) -> bytes:
    """uint32 line lengths, newline included, from the newline offsets of lines from ``start``."""
    return array("I", map(operator.sub, ends, itertools.chain((start - 1,), ends))).tobytes()


def stratum_name(value) -> str:
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
