"""Packing as an index over the prepared rows, and the views the trainer reads them through.

The prepared data holds every row once (int32 ids, int8 loss mask). Packing is a plan over
those rows, made once at preparation and stored beside them: TRL's best-fit-decreasing over
windows of ``WINDOW`` rows (as its ``pack_dataset`` does over ``map`` batches), written as the
row numbers in packed order plus where each packed sequence starts. The views join a packed
sequence's rows and build int64 labels when a batch is drawn, so nothing is written per start
and TRL's own preparation (a second packed copy on disk) is skipped.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict, deque

import numpy as np

WINDOW = 1000


def bfd(lengths: np.ndarray, seq_length: int) -> list[list[int]]:
    """Best-fit-decreasing bins of positions into ``lengths``: TRL's ``_pack_bfd`` on lengths only.

    TRL finds the smallest free space that fits in a Python segment tree; here the distinct free
    spaces are a sorted list searched with ``bisect`` (a window holds at most a few hundred of
    them), which picks the same space, so the bins come out the same, several times faster.
    """
    order = np.argsort(-lengths, kind="stable")
    free = [seq_length]  # distinct free spaces of open bins, sorted; seq_length stands for a new bin
    space_to_bin: dict[int, deque] = defaultdict(deque)
    bins: list[dict] = []
    for idx, length in zip(order.tolist(), lengths[order].tolist(), strict=True):
        k = bisect_left(free, length)
        space = free[k]
        if space < seq_length:
            b = space_to_bin[space].popleft()
            if not space_to_bin[space]:
                del free[k]
        else:
            b = {"ids": [], "length": 0}
            bins.append(b)
        b["ids"].append(idx)
        b["length"] += length
        space -= length
        space_to_bin[space].append(b)
        if space > 0:
            k = bisect_left(free, space)
            if k == len(free) or free[k] != space:
                free.insert(k, space)
    return [b["ids"] for b in bins]


def pack_index(
    rows: np.ndarray, lengths: np.ndarray, seq_length: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """(row numbers in packed order, int64 bounds) for ``rows`` of ``lengths``; unpacked: one a sequence."""
    rows = np.asarray(rows, np.int64)
    if seq_length is None:
        return rows.astype(np.int32), np.arange(len(rows) + 1, dtype=np.int64)
    order, bounds = [], [0]
    for start in range(0, len(rows), WINDOW):
        window = rows[start : start + WINDOW]
        for b in bfd(lengths[window], seq_length):
            order.extend(window[b].tolist())
            bounds.append(bounds[-1] + len(b))
    return np.asarray(order, np.int32), np.asarray(bounds, np.int64)


class RowReader:
    """Rows of the prepared Arrow table by number: ids and int64 labels (-100 off the mask).

    Reads the memory-mapped record batches in place (no ``combine_chunks``: that would copy
    the whole corpus into memory).
    """

    def __init__(self, table) -> None:
        self.table = table
        ids, mask = table.column("input_ids").chunks, table.column("mask").chunks
        self.starts = np.cumsum([0] + [len(c) for c in ids])
        self.offsets = [c.offsets.to_numpy() for c in ids]
        self.id_values = [c.values.to_numpy() for c in ids]
        self.mask_values = [c.values.to_numpy() for c in mask]
        self.mask_offsets = [c.offsets.to_numpy() for c in mask]

    def __len__(self) -> int:
        return int(self.starts[-1])

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        c = int(np.searchsorted(self.starts, i, "right")) - 1
        j = i - int(self.starts[c])
        a, b = self.offsets[c][j], self.offsets[c][j + 1]
        m = self.mask_offsets[c][j]
        ids = self.id_values[c][a:b].astype(np.int64)
        labels = np.where(self.mask_values[c][m : m + b - a] != 0, ids, -100)
        return ids, labels

    def __getitem__(self, rows: list[int]) -> dict:
        """Columns of several rows as lists (what the curriculum's rows read)."""
        pairs = [self.row(int(i)) for i in rows]
        return {"input_ids": [p[0].tolist() for p in pairs], "labels": [p[1].tolist() for p in pairs]}


class Subset:
    """Some rows of a reader, numbered from 0 (the training rows, as the curriculum counts them)."""

    def __init__(self, reader: RowReader, rows: np.ndarray) -> None:
        self.reader, self.rows = reader, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, positions: list[int]) -> dict:
        return self.reader[[int(self.rows[int(i)]) for i in positions]]


class PackedView:
    """A map-style dataset of packed (or single) rows; made a torch Dataset by ``view``."""

    column_names = ["input_ids", "labels", "seq_lengths"]  # what TRL's checks read

    def __init__(
        self, reader: RowReader, order: np.ndarray, bounds: np.ndarray, packed: bool, codes=None
    ) -> None:
        self.reader, self.order, self.bounds, self.packed = reader, order, bounds, packed
        # codes: each position of ``order``'s category number (engine.train.eval_categories); each
        # item then carries ``token_category``, one number a token, for the per-category eval loss.
        self.codes = codes

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def __getitem__(self, i: int) -> dict:
        rows = self.order[self.bounds[i] : self.bounds[i + 1]]
        parts = [self.reader.row(int(r)) for r in rows]
        if not self.packed:
            item = {"input_ids": parts[0][0], "labels": parts[0][1]}
        else:
            item = {
                "input_ids": np.concatenate([p[0] for p in parts]),
                "labels": np.concatenate([p[1] for p in parts]),
                "seq_lengths": [len(p[0]) for p in parts],
            }
        if self.codes is not None:
            codes = self.codes[self.bounds[i] : self.bounds[i + 1]]
            item["token_category"] = np.repeat(codes, [len(p[0]) for p in parts])
        return item


def view(reader: RowReader, order, bounds, packed: bool, codes=None):
    import torch

    class View(PackedView, torch.utils.data.Dataset):
        pass

    return View(reader, np.asarray(order), np.asarray(bounds), packed, codes)
