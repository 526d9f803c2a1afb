"""From the config's datasets to tokenized train and validation sets.

One streaming pass over every file: rows are validated (bad ones listed as file:line),
encoded with assistant-only labels, held to ``sequence_len`` by the ``too_long`` policy,
and written to Arrow through ``datasets`` so a 5M-row corpus never sits in Python lists.
``check`` runs the same pass without building anything.
"""

from __future__ import annotations

import random
import sys
from array import array
from dataclasses import dataclass
from pathlib import Path

from engine import readers
from engine.data import BadRow, Options, Stats, bad_rows_error, parse_line, read_rows
from engine.masks import MaskOptions
from engine.prompt_formats import RowEncoder


@dataclass
class Prepared:
    train: object
    val: object | None
    stats: Stats
    dropped_too_long: int = 0
    truncated: int = 0
    no_labels: int = 0


def scan_rows(config, encoder: RowEncoder | None, stats: Stats):
    """Yield (row, ids, labels) for good rows; fills ``stats`` as it goes."""
    for spec in config.datasets:
        options = MaskOptions.of(spec, config)
        for item in read_rows(spec):
            if isinstance(item, tuple):
                stats.bad.append(item)
                continue
            ids = labels = None
            if encoder is not None:
                try:
                    enc = encoder.encode_row(item, options)
                except BadRow as e:
                    stats.bad.append((item.file, item.line, str(e)))
                    continue
                ids, labels = enc.input_ids, enc.labels
                if enc.notes:
                    stats.note(item.file, item.line, enc.notes)
                if len(ids) > config.sequence_len:
                    stats.too_long.append((item.file, item.line, len(ids)))
            stats.add(
                item,
                len(ids) if ids is not None else None,
                sum(1 for x in labels if x != -100) if labels is not None else None,
            )
            yield item, ids, labels


PARALLEL_MIN = 4 << 20  # bytes of data below which `check` tokenizes in one process


def check(config, tokenizer=None, workers: int = 1, collect: bool = False) -> Stats:
    """Validate every row (and tokenize it, given a tokenizer) without building anything.

    ``workers`` > 1 tokenizes in that many processes (same results, in file order).
    ``collect`` keeps each good row's category and token count (``stats.row_categories``,
    ``stats.row_lengths``) for the curriculum preview.
    """
    stats = Stats()
    if collect:
        stats.row_categories, stats.row_lengths = [], array("i")
    plain = all(s.path.endswith(".jsonl") and Path(s.path).is_file() and not s.split for s in config.datasets)
    size = sum(Path(s.path).stat().st_size for s in config.datasets) if plain else 0
    if tokenizer is not None and workers > 1 and size >= PARALLEL_MIN:
        _check_parallel(config, tokenizer, stats, workers)
        return stats
    encoder = RowEncoder(tokenizer) if tokenizer is not None else None
    for item, ids, _ in scan_rows(config, encoder, stats):
        if collect and ids is not None:
            stats.row_categories.append(sys.intern(item.category))
            stats.row_lengths.append(len(ids))
    return stats


_worker: dict = {}


def _init_check_worker(tokenizer, train_on_inputs: bool) -> None:
    _worker["encoder"] = RowEncoder(tokenizer)
    _worker["train_on_inputs"] = train_on_inputs


def _check_chunk(path: str, opt: Options, first_line: int, raws: list[bytes], options=None) -> list:
    """Parse and tokenize consecutive lines: (line, category, tokens, trained) or ("bad", row),
    and ("note", (file, line, notes)) for what the template did to a row."""
    encoder = _worker["encoder"]
    options = options or MaskOptions(train_on_inputs=_worker["train_on_inputs"])
    out = []
    for i, raw in enumerate(raws):
        item = parse_line(path, first_line + i, raw, opt)
        if item is None:
            continue
        if isinstance(item, tuple):
            out.append(("bad", item))
            continue
        try:
            enc = encoder.encode_row(item, options)
        except BadRow as e:
            out.append(("bad", (item.file, item.line, str(e))))
            continue
        ids, labels = enc.input_ids, enc.labels
        if enc.notes:
            out.append(("note", (item.file, item.line, enc.notes)))
        out.append((item.line, item.category, len(ids), sum(1 for x in labels if x != -100)))
    return out


def _check_parallel(config, tokenizer, stats: Stats, workers: int, lines_per_task: int = 500) -> None:
    import multiprocessing as mp
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor

    from engine.errors import UserError

    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    collect = stats.row_lengths is not None

    def drain(path: str, results: list) -> None:
        for r in results:
            if r[0] == "bad":
                stats.bad.append(r[1])
                continue
            if r[0] == "note":
                stats.note(*r[1])
                continue
            line, category, n, trained = r
            stats.add_counts(path, category, n, trained)
            if n > config.sequence_len:
                stats.too_long.append((path, line, n))
            if collect:
                stats.row_categories.append(sys.intern(category))
                stats.row_lengths.append(n)

    with ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_init_check_worker, initargs=(tokenizer, config.train_on_inputs)
    ) as pool:
        for spec in config.datasets:
            path, options = spec.path, MaskOptions.of(spec, config)
            if not Path(path).is_file():
                raise UserError(f"{path}: dataset file not found", "fix `datasets[].path` in the config")
            pending: deque = deque()
            with open(path, "rb") as f:
                chunk, first = [], 1
                for lineno, raw in enumerate(f, 1):
                    if not chunk:
                        first = lineno
                    chunk.append(raw)
                    if len(chunk) >= lines_per_task:
                        pending.append(
                            pool.submit(_check_chunk, path, Options.of(spec), first, chunk, options)
                        )
                        chunk = []
                        if len(pending) >= 3 * workers:  # bounded: a 13 GB file never sits in memory
                            drain(path, pending.popleft().result())
                if chunk:
                    pending.append(pool.submit(_check_chunk, path, Options.of(spec), first, chunk, options))
            while pending:
                drain(path, pending.popleft().result())


def _val_indices(n: int, size: float, seed: int) -> set[int]:
    count = int(size) if size >= 1 else int(round(n * size))
    count = min(count, max(n - 1, 0))
    return set(random.Random(seed).sample(range(n), count)) if count else set()


def prepare(config, tokenizer, cache_dir: str | Path) -> Prepared:
    """Tokenize every row; raise the bad-rows error unless ``skip_bad_rows``."""
    from datasets import Dataset

    from engine.errors import UserError

    sizes = [readers.size_of(spec.path) for spec in config.datasets]  # raises for a missing path
    encoder = RowEncoder(tokenizer)
    stats = Stats()
    counts = {"truncated": 0, "dropped": 0, "no_labels": 0}

    def rows():
        for item, ids, labels in scan_rows(config, encoder, stats):
            if len(ids) > config.sequence_len:
                if config.too_long == "drop":
                    counts["dropped"] += 1
                    continue
                ids, labels = ids[: config.sequence_len], labels[: config.sequence_len]
                counts["truncated"] += 1
            if all(x == -100 for x in labels[1:]):
                counts["no_labels"] += 1
                continue
            yield {"input_ids": ids, "labels": labels, "category": item.category}

    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    # A list keeps the demo fast; large corpora go through Arrow on disk.
    small = sum(sizes) < 64 * 2**20
    if small:
        records = list(rows())
        full = Dataset.from_list(records) if records else None
    else:
        import uuid

        # A fresh fingerprint: a cached result would skip the pass that fills `stats`.
        full = Dataset.from_generator(rows, cache_dir=str(cache), fingerprint=uuid.uuid4().hex)
    if stats.bad and not config.skip_bad_rows:
        raise bad_rows_error(stats.bad, stats.total)
    if full is None or len(full) == 0:
        raise UserError("no trainable rows in the datasets", "check `datasets` paths and row formats")
    val = None
    if config.val_set_size:
        held = _val_indices(len(full), config.val_set_size, config.seed)
        if held:
            val = full.select(sorted(held))
            full = full.select([i for i in range(len(full)) if i not in held])
    return Prepared(full, val, stats, counts["dropped"], counts["truncated"], counts["no_labels"])
