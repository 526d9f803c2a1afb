"""From the config's datasets to prepared, memory-mapped train and validation sets.

One pass over every file, on every core: byte ranges go to worker processes that parse,
render, mask and tokenize their rows (``engine.data.prepwork``); the main process takes the results
in file order, writes the kept rows to one Arrow file, and reports bad rows as file:line. The
result is kept under ``dataset_prepared_path`` (``engine.data.prepcache``) with the split and the
packing plan, so every later start and resume reads it back without a tokenizer call.
``check`` runs the same pass without writing anything.
"""

from __future__ import annotations

import os
import random
import sys
import time
from array import array
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine import faults
from engine.data import datafp, prepcache, prepcheck, prepwork, readers
from engine.data.data import Options, Stats, bad_rows_error, read_rows
from engine.data.masks import BadRow, MaskOptions
from engine.data.prompt_formats import RowEncoder
from engine.errors import UserError

PARALLEL_MIN = 4 << 20  # bytes of data below which one process does it all


class Stopped(Exception):
    """Preparation was asked to stop; nothing of it is kept."""


@dataclass
class Prepared:
    train: object  # datasets.Dataset of the training rows (input_ids, mask, category)
    val: object | None
    stats: Stats
    dropped_too_long: int = 0
    truncated: int = 0
    no_labels: int = 0
    cut: int = 0
    folder: Path | None = None
    cached: bool = False  # read back from dataset_prepared_path: no row was tokenized
    encoded_rows: int = 0  # rows that went through the tokenizer in this call
    tokens: int = 0  # kept tokens, train and val
    data: list[dict] = field(default_factory=list)  # the data's fingerprint (engine.data.datafp)
    notes: list[str] = field(default_factory=list)  # what was found and done on the way (a rebuild)
    index: dict = field(default_factory=dict)  # train_order, train_bounds, val_order, val_bounds
    reader: object | None = None

    def view(self, which: str, packed: bool, categories: list[str] | None = None):
        """The torch dataset the trainer reads: packed sequences (or single rows), int64 labels.

        With ``categories`` (filled by this call with the names, in code order), each item also
        carries ``token_category``: its tokens' row's ``_category`` as a number.
        """
        from engine.data.packview import view

        order = self.index[f"{which}_order"]
        codes = None
        if categories is not None:
            names, codes = self.category_codes(order)
            categories[:] = names
        return view(self.reader, order, self.index[f"{which}_bounds"], packed, codes)

    def category_codes(self, rows) -> tuple[list[str], np.ndarray]:
        """(category names, each of ``rows``' category as an index into them): read for those rows only."""
        import pyarrow as pa

        column = self.reader.table.column("category").take(pa.array(np.asarray(rows, np.int64)))
        encoded = column.combine_chunks().dictionary_encode()
        return [str(n) for n in encoded.dictionary.to_pylist()], encoded.indices.to_numpy(
            zero_copy_only=False
        ).astype(np.int32)


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
                    stats.add_too_long(item.file, item.line, len(ids))
            stats.add(
                item,
                len(ids) if ids is not None else None,
                sum(1 for x in labels if x != -100) if labels is not None else None,
            )
            yield item, ids, labels


def workers_for(config) -> int:
    n = getattr(config, "dataset_processes", None) or getattr(config, "dataset_num_proc", None)
    return max(1, n or os.cpu_count() or 1)


def _missing_files(config) -> None:
    for spec in config.datasets:
        readers.size_of(spec.path)  # raises the clear error for a missing file, folder or hub id


def plain(spec) -> bool:
    """A whole local .jsonl file: cut into byte ranges for the workers. Anything else goes
    through engine.data.readers (read_rows) in this process."""
    return spec.path.endswith(".jsonl") and Path(spec.path).is_file() and not getattr(spec, "split", None)


# ---- the pass -----------------------------------------------------------------------------


class Pass:
    """Every range of every file through the workers, results in file order."""

    def __init__(
        self, config, tokenizer, opts: prepwork.Options, workers: int, progress=None, should_stop=None
    ):
        self.config, self.tokenizer, self.opts = config, tokenizer, opts
        self.progress, self.should_stop = progress, should_stop
        size = sum(readers.size_of(s.path) for s in config.datasets)
        self.total_bytes, self.done_bytes = size, 0
        parallel = sum(Path(s.path).stat().st_size for s in config.datasets if plain(s))
        self.workers = workers if parallel >= PARALLEL_MIN else 1
        prepwork.probe(tokenizer, config.datasets)
        self.stats = Stats()
        self.counts = {"truncated": 0, "dropped": 0, "no_labels": 0, "cut": 0, "encoded": 0}
        self.hashes: list[str] = []
        self.kept_rows = self.kept_tokens = 0
        self.t0 = time.time()

    def chunks(self):
        """Yield (path, line base, Chunk) in file order; fills stats, counts and hashes."""
        prepwork.init_worker(self.tokenizer, self.opts)  # here too: run_rows works in this process
        if self.workers == 1:
            yield from self._run(lambda *a: _Done(prepwork.run_range(*a)))
            return
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ProcessPoolExecutor(
            self.workers,
            mp_context=ctx,
            initializer=prepwork.init_pool_worker,
            initargs=(self.tokenizer, self.opts, os.getpid()),
        ) as pool:
            try:
                yield from self._run(lambda *a: pool.submit(prepwork.run_range, *a))
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise

    def _run(self, submit):
        for spec in self.config.datasets:
            masks = MaskOptions.of(spec, self.config)
            if not plain(spec):
                yield from self._run_rows(spec, masks)
                continue
            path, digests, base, parse = spec.path, [], 1, Options.of(spec)
            pending: deque = deque()
            todo = deque(prepwork.ranges(Path(path).stat().st_size))
            while todo or pending:
                while todo and len(pending) < 3 * self.workers:  # bounded: results never pile up
                    a, b = todo.popleft()
                    pending.append((b - a, submit(path, parse, masks, a, b)))
                nbytes, fut = pending.popleft()
                chunk = fut.result()
                self._take(path, base, chunk)
                digests.append(chunk.digest)
                yield path, base, chunk
                base += chunk.newlines
                self.done_bytes += nbytes
                if self.progress is not None:
                    self.progress(self)
                if self.should_stop is not None and self.should_stop():
                    raise Stopped
            self.hashes.append(datafp.combine(digests))

    def _run_rows(self, spec, masks: MaskOptions):
        for chunk in prepwork.run_rows(spec, masks):
            self._take(chunk.file, 0, chunk)
            yield chunk.file, 0, chunk
            if self.progress is not None:
                self.progress(self)
            if self.should_stop is not None and self.should_stop():
                raise Stopped
        self.done_bytes += readers.size_of(spec.path)
        self.hashes.append(datafp.listing_hash(spec.path))

    def _take(self, path: str, base: int, c: prepwork.Chunk) -> None:
        faults.in_phase("prep")
        s = self.stats
        s.merge(c.stats)
        s.bad.extend((path, base + rel, why) for rel, why in c.bad)
        for rel, notes in c.notes:  # in file order, as the chunks come
            s.note(path, base + rel, notes)
        for rel, n in c.too_long:
            s.add_too_long(path, base + rel, n)
        if s.row_categories is not None:
            s.row_categories.extend(sys.intern(x) for x in c.good_categories)
            s.row_lengths.extend(c.good_lengths)
        for k in ("truncated", "dropped", "no_labels", "cut", "encoded"):
            self.counts[k] += getattr(c, k)
        if c.lengths is not None:
            self.kept_rows += len(c.lengths)
            self.kept_tokens += int(c.lengths.sum())

    def rate(self) -> dict:
        """Progress so far: rows, tokens, bytes, rates and an ETA (what the `prepare` record carries)."""
        dt = max(time.time() - self.t0, 1e-6)
        frac = self.done_bytes / self.total_bytes if self.total_bytes else 1.0
        rows = sum(self.stats.rows_by_file.values()) + len(self.stats.bad)
        tokens = sum(self.stats.tokens_by_category.values())
        return {
            "rows": rows,
            "tokens": tokens,
            "bytes_done": self.done_bytes,
            "bytes_total": self.total_bytes,
            "rows_per_s": round(rows / dt, 1),
            "tokens_per_s": round(tokens / dt, 1),
            "eta_s": round(dt * (1 - frac) / frac, 1) if frac > 0 else None,
            "elapsed_s": round(dt, 1),
            "workers": self.workers,
        }


class _Done:
    def __init__(self, value) -> None:
        self.value = value

    def result(self):
        return self.value


def check(config, tokenizer=None, workers: int = 1, collect: bool = False, progress=None) -> Stats:
    """Validate every row (and tokenize it, given a tokenizer) without building anything.

    ``workers`` > 1 tokenizes in that many processes (same results, in file order).
    ``collect`` keeps each good row's category and token count (``stats.row_categories``,
    ``stats.row_lengths``) for the curriculum preview.
    """
    _missing_files(config)
    opts = prepwork.Options(
        config.sequence_len, config.too_long, config.train_on_inputs, keep=False, collect=collect
    )
    p = Pass(config, tokenizer, opts, workers, progress)
    if collect:
        p.stats.row_categories, p.stats.row_lengths = [], array("i")
    for _ in p.chunks():
        pass
    return p.stats


# ---- prepare --------------------------------------------------------------------------------


def _val_indices(n: int, size: float, seed: int) -> set[int]:
    count = int(size) if size >= 1 else int(round(n * size))
    count = min(count, max(n - 1, 0))
    return set(random.Random(seed).sample(range(n), count)) if count else set()


def prepare(
    config,
    tokenizer,
    root: str | Path | None = None,
    *,
    workers: int | None = None,
    progress=None,
    should_stop=None,
) -> Prepared:
    """Prepared train/val sets: from ``root`` when an identical preparation is there, else built.

    Raises the bad-rows error unless ``skip_bad_rows``; raises ``Stopped`` when ``should_stop()``
    turns true during a build (its temporary folder is removed).
    """
    _missing_files(config)
    root = Path(root) if root is not None else prepcache.root_for(config)
    tok_id = prepcache.tokenizer_identity(tokenizer)
    vocab = len(tokenizer) if tokenizer is not None else None
    hashes = [
        (datafp.known_hash(root, s.path) or prepcache.known_hash(root, s.path))
        if plain(s)
        else datafp.listing_hash(s.path)
        for s in config.datasets
    ]
    prepared, notes = None, []
    if all(hashes):
        key = prepcache.key_of(prepcache.key_inputs(config, tok_id, hashes))
        prepared = _cached(root / key, vocab, notes)
    if prepared is None:
        prepared = _build(
            config, tokenizer, root, tok_id, workers or workers_for(config), progress, should_stop
        )
    prepared.notes = notes + prepared.notes
    if prepared.stats.bad and not config.skip_bad_rows:
        raise bad_rows_error(prepared.stats.bad, prepared.stats.total)
    if len(prepared.train) == 0:
        raise UserError(
            f"no trainable rows in the datasets{_why_none(prepared.stats)}",
            "check `datasets` paths and row formats",
        )
    return prepared


def _why_none(stats) -> str:
    """Why no row is left: the bad rows' most common reason (a VL data set whose every row has an
    image says so), with the first row that gave it."""
    if not stats.bad:
        return ""
    reasons = Counter(why for _, _, why in stats.bad)
    why, n = reasons.most_common(1)[0]
    f, line, _ = next(b for b in stats.bad if b[2] == why)
    return f": all {len(stats.bad)} row(s) were skipped as bad; {n} of them because {why} (first: {f}:{line})"


def _build(config, tokenizer, root: Path, tok_id: str, workers: int, progress, should_stop) -> Prepared:
    prepcache.remove_stale(root)  # interrupted preparations of dead processes
    fps = [datafp.stat_of(s.path) for s in config.datasets]
    opts = prepwork.Options(config.sequence_len, config.too_long, config.train_on_inputs)
    p = Pass(config, tokenizer, opts, workers, progress, should_stop)
    tmp = prepcache.new_tmp(root)
    try:
        meta = _write(config, p, tmp, tok_id, fps)
    except BaseException as e:
        import shutil

        written = prepcache.size_of_folder(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            frac = p.done_bytes / p.total_bytes if p.total_bytes else 1.0
            full = prepcache.disk_full(e, root, written, frac)
            if full is not None:
                raise full from None
        raise
    key = prepcache.key_of(meta["inputs"])
    folder = prepcache.commit(tmp, root, key, meta["slot"])
    notes = []
    try:
        datafp.remember(root, fps)
    except OSError as e:  # the memo only saves a hash pass: meta.json has the same (prepcache.known_hash)
        notes.append(f"{root / datafp.MEMO}: not written ({e.strerror or e}); the next start reads meta.json")
    try:
        prepared = _load(folder, len(tokenizer) if tokenizer is not None else None)
    except prepcheck.Damaged as e:
        raise UserError(
            f"prepared data damaged right after writing: {e}", f"remove {folder} and start again"
        ) from None
    prepared.cached, prepared.encoded_rows, prepared.notes = False, p.counts["encoded"], notes
    return prepared


def _write(config, p: Pass, tmp: Path, tok_id: str, fps: list[dict]) -> dict:
    """Every file of a preparation into ``tmp``, ``meta.json`` (with the checksums) last."""
    import pyarrow as pa

    lengths = []
    with pa.OSFile(str(tmp / "rows.arrow"), "wb") as sink, pa.ipc.new_stream(sink, rows_schema()) as writer:
        for _path, _base, c in p.chunks():
            if len(c.lengths):
                writer.write_batch(rows_batch(c.ids, c.mask, c.lengths, c.categories))
                lengths.append(c.lengths)
    all_lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int32)
    for name, arr in _index(config, all_lengths).items():
        np.save(tmp / f"{name}.npy", arr)
    for fp, h in zip(fps, p.hashes, strict=True):
        fp["sha256"] = h
    meta = {
        "version": prepcache.VERSION,
        "inputs": prepcache.key_inputs(config, tok_id, p.hashes),
        "slot": prepcache.slot_of(config),
        "data": fps,
        "stats": prepcache.stats_to_json(p.stats),
        "counts": {k: v for k, v in p.counts.items() if k != "encoded"},
        "rows": int(len(all_lengths)),
        "tokens": int(all_lengths.sum()),
        "integrity": prepcheck.digests(tmp),
    }
    meta["digest"] = prepcache.meta_digest(meta)
    _write_json(tmp / "meta.json", meta)
    return meta


def rows_schema():
    import pyarrow as pa

    return pa.schema(
        [("input_ids", pa.list_(pa.int32())), ("mask", pa.list_(pa.int8())), ("category", pa.string())]
    )


def rows_batch(ids, mask, lengths, categories):
    """Prepared rows as one record batch: every row's ids and mask concatenated, cut by ``lengths``."""
    import pyarrow as pa

    offsets = np.zeros(len(lengths) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    ids = pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids, pa.int32()))
    mask = pa.ListArray.from_arrays(pa.array(offsets), pa.array(mask, pa.int8()))
    return pa.record_batch([ids, mask, pa.array(categories, pa.string())], schema=rows_schema())


def _index(config, lengths: np.ndarray) -> dict[str, np.ndarray]:
    """The seeded validation split and the packing plan of each part (engine.data.packview)."""
    from engine.data.packview import pack_index

    held = _val_indices(len(lengths), config.val_set_size, config.seed)
    val_rows = np.asarray(sorted(held), np.int64)
    keep = np.ones(len(lengths), bool)
    keep[val_rows] = False
    train_rows = np.flatnonzero(keep)
    seq = config.sequence_len if config.sample_packing else None
    train_order, train_bounds = pack_index(train_rows, lengths, seq)
    val_order, val_bounds = pack_index(val_rows, lengths, seq)
    return {
        "train_rows": train_rows.astype(np.int32),
        "val_rows": val_rows.astype(np.int32),
        "train_order": train_order,
        "train_bounds": train_bounds,
        "val_order": val_order,
        "val_bounds": val_bounds,
    }


def _write_json(path: Path, obj) -> None:
    import json

    with open(path, "w") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _cached(folder: Path, vocab: int | None, notes: list[str]) -> Prepared | None:
    """The committed preparation in ``folder`` if it is there and intact; a damaged one is
    removed (it is rebuilt from the data) and said in ``notes``."""
    if not folder.exists():
        return None
    try:
        prepared = _load(folder, vocab)
        if prepared is None:
            raise prepcheck.Damaged(folder / "meta.json", "unreadable")
        return prepared
    except prepcheck.Damaged as e:
        notes.append(f"prepared data damaged, rebuilt from the data files: {e}")
        prepcache.discard(folder)
        return None


def cache_report(config, tokenizer=None) -> list[str]:
    """``check``'s lines on the prepared data of this config's slot: verified, or damaged."""
    root, slot = prepcache.root_for(config), prepcache.slot_of(config)
    vocab = len(tokenizer) if tokenizer is not None else None
    out = []
    for folder in sorted(root.iterdir()) if root.is_dir() else ():
        if folder.name.startswith(".") or not folder.is_dir():
            continue
        meta = prepcache.load_meta(folder)
        if meta is None:
            out.append(f"prepared data DAMAGED: {folder / 'meta.json'}: unreadable or of an older version")
        if meta is None or meta.get("slot") != slot:
            continue
        try:
            _load(folder, vocab)
            out.append(f"prepared data: {folder}: verified")
        except prepcheck.Damaged as e:
            out.append(f"prepared data DAMAGED: {e} (the next train or preprocess rebuilds it)")
    return out


def _load(folder: Path, vocab: int | None = None) -> Prepared | None:
    """A committed preparation, memory-mapped and verified (``engine.data.prepcheck``); None when
    the folder is missing or not ours. Raises ``prepcheck.Damaged``."""
    meta = prepcache.load_meta(folder)
    if meta is None:
        return None
    from datasets import Dataset

    from engine.data.packview import RowReader

    prepcheck.verify_bytes(folder, meta)
    try:
        rows = Dataset.from_file(str(folder / "rows.arrow"))
    except Exception as e:  # checksums matched, so this is not damage of ours: say what it is
        raise prepcheck.Damaged(folder / "rows.arrow", f"not readable as Arrow ({e})") from None
    index = prepcheck.load_index(folder, meta["rows"])
    prepcheck.check_rows(folder, rows.data.table, meta["rows"], vocab)
    val_rows = index["val_rows"]
    # No validation split: the training rows are all of them, in order, and select() would spend
    # seconds a million rows finding that out on every start.
    train = rows.select(index["train_rows"], keep_in_memory=True) if len(val_rows) else rows
    val = rows.select(val_rows, keep_in_memory=True) if len(val_rows) else None
    c = meta["counts"]
    return Prepared(
        train,
        val,
        prepcache.stats_from_json(meta["stats"]),
        dropped_too_long=c["dropped"],
        truncated=c["truncated"],
        no_labels=c["no_labels"],
        cut=c["cut"],
        folder=folder,
        cached=True,
        tokens=meta["tokens"],
        data=meta["data"],
        index=index,
        reader=RowReader(rows.data.table),
    )
