"""From the config's datasets to tokenized train and validation sets.

One streaming pass over every file: rows are validated (bad ones listed as file:line),
encoded with assistant-only labels, held to ``sequence_len`` by the ``too_long`` policy,
and written to Arrow through ``datasets`` so a 5M-row corpus never sits in Python lists.
``check`` runs the same pass without building anything.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from engine.data import BadRow, ChatEncoder, Stats, bad_rows_error, read_rows


@dataclass
class Prepared:
    train: object
    val: object | None
    stats: Stats
    dropped_too_long: int = 0
    truncated: int = 0
    no_labels: int = 0


def scan_rows(config, encoder: ChatEncoder | None, stats: Stats):
    """Yield (row, ids, labels) for good rows; fills ``stats`` as it goes."""
    for spec in config.datasets:
        for item in read_rows(spec.path, spec.type, spec.field_messages):
            if isinstance(item, tuple):
                stats.bad.append(item)
                continue
            ids = labels = None
            if encoder is not None:
                try:
                    ids, labels = encoder.encode(item.messages, config.train_on_inputs)
                except BadRow as e:
                    stats.bad.append((item.file, item.line, str(e)))
                    continue
                if len(ids) > config.sequence_len:
                    stats.too_long.append((item.file, item.line, len(ids)))
            stats.add(item, len(ids) if ids is not None else None)
            yield item, ids, labels


def check(config, tokenizer=None) -> Stats:
    stats = Stats()
    encoder = ChatEncoder(tokenizer) if tokenizer is not None else None
    for _ in scan_rows(config, encoder, stats):
        pass
    return stats


def _val_indices(n: int, size: float, seed: int) -> set[int]:
    count = int(size) if size >= 1 else int(round(n * size))
    count = min(count, max(n - 1, 0))
    return set(random.Random(seed).sample(range(n), count)) if count else set()


def prepare(config, tokenizer, cache_dir: str | Path) -> Prepared:
    """Tokenize every row; raise the bad-rows error unless ``skip_bad_rows``."""
    from datasets import Dataset

    encoder = ChatEncoder(tokenizer)
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
    small = sum(Path(s.path).stat().st_size for s in config.datasets) < 64 * 2**20
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
        from engine.errors import UserError

        raise UserError("no trainable rows in the datasets", "check `datasets` paths and row formats")
    val = None
    if config.val_set_size:
        held = _val_indices(len(full), config.val_set_size, config.seed)
        if held:
            val = full.select(sorted(held))
            full = full.select([i for i in range(len(full)) if i not in held])
    return Prepared(full, val, stats, counts["dropped"], counts["truncated"], counts["no_labels"])
