"""Worker side of data preparation: one byte range of a JSONL file -> its rows as arrays.

A file is cut into fixed ranges of ``RANGE`` bytes whatever the number of processes, so one
process and many see the same chunks, keep the same rows in the same order and compute the
same content hash. A range owns the lines that start inside it (the line that runs past its
end is read whole); only the range's own bytes are hashed and their newlines counted, so the
ranges together cover the file exactly once and line numbers come out as a running sum.

Each row is encoded by the per-row encoder (``engine.data.prompt_formats.RowEncoder``: chat rows
through the masks' ``ChatEncoder``, alpaca and completion rows through Axolotl's prompt formats)
with the dataset's parse and mask options; this module only feeds it, cuts absurd rows before
they reach the tokenizer, applies ``too_long`` and turns the result into narrow arrays (int32
ids, int8 loss mask). Files that are not plain JSONL (parquet, arrow, .json, folders, hub ids,
``split`` slices) are read by ``engine.data.data.read_rows`` in the main process and go through the
same per-row code (``run_rows``), in chunks of the same shape.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import os
import signal
import sys
from dataclasses import dataclass, field

import numpy as np

from engine.data.data import BadRow, Row, Stats, parse_line, read_rows
from engine.data.data import Options as ParseOptions
from engine.data.masks import MaskOptions
from engine.data.prompt_formats import RowEncoder

RANGE = 1 << 20  # bytes per task; a constant, so results never depend on the worker count


@dataclass(frozen=True)
class Options:
    """What the worker needs from the config (picklable, small)."""

    sequence_len: int
    too_long: str = "truncate"
    train_on_inputs: bool = False
    keep: bool = True  # False for `check`: counts only, no arrays
    collect: bool = False  # per good row category and length (curriculum preview)


@dataclass
class Chunk:
    """One range's result; line numbers are relative (``rel``: newlines from the range start)."""

    digest: bytes
    newlines: int
    stats: Stats = field(default_factory=Stats)
    bad: list[tuple[int, str]] = field(default_factory=list)
    too_long: list[tuple[int, int]] = field(default_factory=list)
    ids: np.ndarray | None = None  # int32, every kept row concatenated
    mask: np.ndarray | None = None  # int8, 1 where the token carries loss
    lengths: np.ndarray | None = None  # int32, tokens per kept row
    categories: list[str] = field(default_factory=list)  # per kept row
    good_categories: list[str] = field(default_factory=list)  # per good row, with `collect`
    good_lengths: list[int] = field(default_factory=list)
    truncated: int = 0
    dropped: int = 0
    no_labels: int = 0
    cut: int = 0  # rows cut to the characters sequence_len can use, before tokenizing
    encoded: int = 0  # rows that went through the tokenizer
    notes: list[tuple[int, list[str]]] = field(default_factory=list)  # (rel, what the template did)
    file: str | None = None  # set by run_rows: its lines are the file's own (base 0)


def ranges(size: int) -> list[tuple[int, int]]:
    return [(a, min(a + RANGE, size)) for a in range(0, size, RANGE)] or [(0, 0)]


# ---- the encoder ------------------------------------------------------------------------


def probe(tokenizer, specs) -> None:
    """Make the chat encoder once here when a dataset needs it: its probing raises the clear
    error in the main process, not in a worker."""
    if tokenizer is not None and any(
        not ParseOptions.of(s).type.startswith(("alpaca", "completion", "custom")) for s in specs
    ):
        _ = RowEncoder(tokenizer).chat


def max_token_chars(tokenizer) -> int:
    """An upper bound on the characters one token can stand for: its longest vocabulary string.

    Byte-level vocabularies write one character per byte, so a decoded token is never longer;
    byte-fallback pieces (``<0x41>``) are longer than what they decode to. Either way a text of
    more than ``sequence_len * this`` characters surely has more than ``sequence_len`` tokens.
    """
    return max(len(t) for t in tokenizer.get_vocab()) or 1


def cut_turns(turns: list[dict], budget: int) -> tuple[list[dict], bool]:
    """The turns held to ``budget`` characters of content in all, in order; True when cut.
    A turn's other keys (reasoning_content, training flags) are kept as they are."""
    out, left = [], budget
    for t in turns:
        if left <= 0:
            return out, True
        content = t["content"]
        if len(content) > left:
            out.append({**t, "content": content[:left]})
            return out, True
        out.append(t)
        left -= len(content)
    return out, False


def cut_row(row: Row, budget: int) -> tuple[Row, bool]:
    """The row held to ``budget`` characters: its turns, and the alpaca/completion fields the
    prompt formats encode from."""
    turns, cut = cut_turns(row.messages, budget)
    if not cut:
        return row, False
    fields, left = [], budget
    for text in row.fields:
        fields.append(text[: max(left, 0)])
        left -= len(text)
    return dataclasses.replace(row, messages=turns, fields=tuple(fields)), True


# ---- one range ----------------------------------------------------------------------------

_state: dict = {}


def init_worker(tokenizer, opts: Options) -> None:
    """Per process: the encoder (its probing runs once here) and the cut budget."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the processes are the parallelism
    _state["encoder"] = RowEncoder(tokenizer) if tokenizer is not None else None
    _state["budget"] = opts.sequence_len * max_token_chars(tokenizer) if tokenizer is not None else 0
    _state["opts"] = opts


def init_pool_worker(tokenizer, opts: Options, parent: int | None = None) -> None:
    """A worker process's start: bound to its parent's life, ``init_worker``, then what exists
    so far set aside from the collector. Every row allocates hundreds of offset tuples, so its
    full passes come often and would walk the libraries' and the tokenizer's objects each time;
    those live as long as the worker does."""
    if parent is not None:
        die_with(parent)
    init_worker(tokenizer, opts)
    gc.freeze()


def die_with(parent: int) -> None:
    """SIGKILL this process when ``parent`` dies (Linux's parent-death signal): a trainer or
    ``preprocess`` killed with kill -9 (or by the OOM killer) leaves no worker behind holding
    ~200 MB each. SIGKILL, not SIGTERM: a forked worker inherited the trainer's handlers."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # died before the signal was armed
        os._exit(1)


def _lines(path: str, a: int, b: int):
    """(digest, newlines, [(rel, raw line)]) for the lines that start in [a, b)."""
    out = []
    with open(path, "rb") as f:
        starts_clean = a == 0
        if a > 0:
            f.seek(a - 1)
            starts_clean = f.read(1) == b"\n"
        block = f.read(b - a)
        digest = hashlib.blake2b(block, digest_size=16).digest()
        newlines = block.count(b"\n")
        pos, rel = 0, 0
        if not starts_clean:
            k = block.find(b"\n")
            pos, rel = (len(block), 0) if k < 0 else (k + 1, 1)
        while pos < len(block):
            e = block.find(b"\n", pos)
            if e < 0:  # the range's last line runs on: read the rest of it, however long
                out.append((rel, block[pos:] + f.readline()))
                break
            out.append((rel, block[pos : e + 1]))
            pos, rel = e + 1, rel + 1
    return digest, newlines, out


def run_range(path: str, parse: ParseOptions, masks: MaskOptions, a: int, b: int) -> Chunk:
    digest, newlines, lines = _lines(path, a, b)
    chunk = Chunk(digest, newlines)
    parts: tuple[list, list, list] = ([], [], [])
    for rel, raw in lines:
        item = parse_line(path, rel, raw, parse)
        del raw
        if item is not None:
            _take_row(chunk, rel, item, masks, parts)
    _finish(chunk, parts)
    return chunk


ROWS_PER_CHUNK = 2000


def run_rows(spec, masks: MaskOptions):
    """The rows ``read_rows(spec)`` gives (any format the readers take, ``split`` honoured), as
    Chunks of one file each with the file's own line numbers; in this process."""
    chunk, parts, n = None, ([], [], []), 0
    for item in read_rows(spec):
        file = item[0] if isinstance(item, tuple) else item.file
        if chunk is not None and (chunk.file != file or n >= ROWS_PER_CHUNK):
            _finish(chunk, parts)
            yield chunk
            chunk = None
        if chunk is None:
            chunk, parts, n = Chunk(b"", 0, file=file), ([], [], []), 0
        n += 1
        _take_row(chunk, item[1] if isinstance(item, tuple) else item.line, item, masks, parts)
    if chunk is not None:
        _finish(chunk, parts)
        yield chunk


def _take_row(chunk: Chunk, rel: int, item, masks: MaskOptions, parts) -> None:
    encoder, budget, opts = _state["encoder"], _state["budget"], _state["opts"]
    ids_parts, mask_parts, lengths = parts
    if isinstance(item, tuple):
        chunk.bad.append((rel, item[2]))
        return
    if encoder is None:
        chunk.stats.add(item, None)
        return
    row, cut = cut_row(item, budget)
    if cut:
        chunk.cut += 1
        if opts.too_long == "drop":  # surely too long: no need to tokenize it at all
            chunk.stats.add(item, None)
            chunk.too_long.append((rel, -1))
            chunk.dropped += 1
            return
    try:
        enc = encoder.encode_row(row, masks)
    except BadRow as e:
        chunk.bad.append((rel, str(e)))
        return
    chunk.encoded += 1
    if enc.notes:
        chunk.notes.append((rel, enc.notes))
    ids, mask = enc.ids.astype(np.int32), enc.mask
    chunk.stats.add(item, len(ids), int(mask.sum()))
    if opts.collect:
        chunk.good_categories.append(item.category)
        chunk.good_lengths.append(len(ids))
    if len(ids) > opts.sequence_len or cut:
        chunk.too_long.append((rel, len(ids)))
        if opts.too_long == "drop":
            chunk.dropped += 1
            return
        ids, mask = ids[: opts.sequence_len], mask[: opts.sequence_len]
        chunk.truncated += 1
    if not mask[1:].any():  # the first token's label is never trained (nothing before it)
        chunk.no_labels += 1
        return
    if opts.keep:
        ids_parts.append(ids)
        mask_parts.append(mask.astype(np.int8))
        lengths.append(len(ids))
        chunk.categories.append(item.category)


def _finish(chunk: Chunk, parts) -> None:
    ids_parts, mask_parts, lengths = parts
    if _state["opts"].keep:
        chunk.ids = np.concatenate(ids_parts) if ids_parts else np.zeros(0, np.int32)
        chunk.mask = np.concatenate(mask_parts) if mask_parts else np.zeros(0, np.int8)
        chunk.lengths = np.asarray(lengths, np.int32)
