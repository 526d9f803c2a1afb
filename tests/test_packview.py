"""The stored packing plan is TRL's best-fit-decreasing, bin for bin."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from trl.data_utils import _pack_bfd

from engine.data.packview import WINDOW, pack_index


def trl_plan(lengths: np.ndarray, seq_length: int) -> tuple[list[int], list[int]]:
    """(rows in packed order, bin bounds) read off TRL's own packing of rows whose ids are their row number."""
    table = pa.table({"input_ids": [[i] * int(n) for i, n in enumerate(lengths)]})
    packed = _pack_bfd(table, seq_length).column("input_ids").to_pylist()
    order, bounds = [], [0]
    for seq in packed:
        rows = list(dict.fromkeys(seq))  # each row's ids are one run of its own number
        order += rows
        bounds.append(bounds[-1] + len(rows))
    return order, bounds


@pytest.mark.parametrize("seed", range(6))
def test_pack_index_is_trls_bfd(seed):
    rng = np.random.default_rng(seed)
    seq_length = int(rng.choice([16, 64, 100, 2048]))
    n = int(rng.integers(1, 400))
    # many ties, rows of exactly seq_length, and very short ones
    lengths = rng.integers(1, seq_length + 1, n)
    lengths[rng.random(n) < 0.2] = seq_length // 3 or 1
    lengths[rng.random(n) < 0.05] = seq_length
    rows = np.arange(n)
    order, bounds = pack_index(rows, lengths, seq_length)
    want_order, want_bounds = trl_plan(lengths, seq_length)
    assert order.tolist() == want_order
    assert bounds.tolist() == want_bounds


def test_pack_index_packs_each_window_on_its_own():
    rng = np.random.default_rng(7)
    lengths = rng.integers(1, 300, WINDOW + 250)
    rows = np.arange(len(lengths))[::-1].copy()  # any row numbers: the plan names rows, not positions
    order, bounds = pack_index(rows, lengths, 512)
    first, first_bounds = trl_plan(lengths[rows[:WINDOW]], 512)
    second, second_bounds = trl_plan(lengths[rows[WINDOW:]], 512)
    assert order.tolist() == [int(rows[i]) for i in first] + [int(rows[WINDOW + i]) for i in second]
    assert bounds.tolist() == first_bounds + [first_bounds[-1] + b for b in second_bounds[1:]]
