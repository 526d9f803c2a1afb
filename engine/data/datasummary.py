"""What a run trains on, read from its prepared data's statistics (no row is read or tokenized).

Everything here is already on disk after preparation (``engine.data.prepare``): ``meta.json``
holds the per-category rows and tokens, the length histogram, bad and too-long rows with their
file:line, the truncated/dropped counts; ``*_bounds.npy`` are the packing plan. So the cockpit's Data tab opens in milliseconds on
millions of rows (``benchmarks/data_tab.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.data.data import Stats
from engine.data.prepcache import load_meta, root_for, slot_of, stats_from_json


@dataclass
class DataSummary:
    folder: Path
    stats: Stats
    rows: int  # kept rows (train and validation)
    tokens: int  # kept tokens
    counts: dict  # truncated, dropped, no_labels, cut (preparation's counts)
    sequence_len: int | None
    packed_sequences: int = 0  # sequences after packing, training and validation
    train_tokens: int = 0  # tokens in them (0: not packed)
    val_rows: int = 0
    bad: list[tuple[str, int, str]] = field(default_factory=list)

    @property
    def packing_efficiency(self) -> float | None:
        """Share of the packed sequences' ``sequence_len`` slots that hold a token."""
        if not self.packed_sequences or not self.sequence_len:
            return None
        return self.train_tokens / (self.packed_sequences * self.sequence_len)

    def histogram(self, bins: int = 12) -> list[tuple[int, int, int]]:
        """(from, to, rows) over the rows' token counts before truncation, ``sequence_len`` a bin
        edge: the bins below it split it evenly, one bin holds everything longer."""
        lengths = self.stats.lengths
        if not lengths:
            return []
        longest = max(lengths)
        top = self.sequence_len or longest
        width = max(1, -(-top // bins))
        out = [[lo, min(lo + width, top), 0] for lo in range(0, top, width)]
        over = 0
        for n, rows in lengths.items():
            if n > top:
                over += rows
            else:
                out[min((max(n, 1) - 1) // width, len(out) - 1)][2] += rows
        result = [tuple(b) for b in out]
        if self.sequence_len and longest > top:
            result.append((top, longest, over))
        return result


def find_prepared(config) -> Path | None:
    """The newest complete preparation under the config's ``dataset_prepared_path`` for its data
    and output (the same slot ``prepare`` writes); None when there is none yet."""
    root = root_for(config)
    slot = slot_of(config)
    found = []
    for d in root.iterdir() if root.is_dir() else []:
        if d.name.startswith(".") or not d.is_dir():
            continue
        meta = load_meta(d)
        if meta is not None and meta.get("slot") == slot:
            found.append((d.stat().st_mtime, d))
    return max(found)[1] if found else None


def data_summary(folder: str | Path, sequence_len: int | None = None) -> DataSummary:
    folder = Path(folder)
    meta = load_meta(folder)
    if meta is None:
        raise FileNotFoundError(f"{folder}: no prepared data here (meta.json missing or not ours)")
    stats = stats_from_json(meta["stats"])
    seq = sequence_len or (meta.get("inputs") or {}).get("sequence_len")
    s = DataSummary(
        folder, stats, int(meta["rows"]), int(meta["tokens"]), dict(meta["counts"]), seq, bad=stats.bad
    )
    s.val_rows = len(np.load(folder / "val_rows.npy", mmap_mode="r"))
    if (meta.get("inputs") or {}).get("sample_packing", True):
        # Both splits are packed by the same plan: every kept token over every packed slot.
        # (The row file itself is not opened: its offsets lie among the ids, a cold read of it all.)
        for split in ("train", "val"):
            s.packed_sequences += max(len(np.load(folder / f"{split}_bounds.npy", mmap_mode="r")) - 1, 0)
        s.train_tokens = s.tokens
    return s
