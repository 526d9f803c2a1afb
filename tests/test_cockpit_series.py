"""The chart's series: resume rule, smoothing, and downsampling that keeps what matters."""

from __future__ import annotations

import math

import numpy as np

from cockpit.series import Series, downsample_index


def test_a_step_again_replaces_the_tail_from_there():
    s = Series()
    for i in range(1, 11):
        s.add(i, 10.0 - i)
    s.add(6, 100.0)  # resumed from checkpoint-5: step 6 is trained again
    assert list(s.steps) == [1, 2, 3, 4, 5, 6]
    assert s.values[-1] == 100.0
    s.truncate(3)
    assert list(s.steps) == [1, 2]


def test_smoothing_skips_nan_and_starts_at_the_first_value():
    s = Series(smoothing=0.5)
    s.add(1, 4.0)
    s.add(2, math.nan)
    s.add(3, 2.0)
    assert s.smooth[0] == 4.0 and s.smooth[1] == 4.0 and s.smooth[2] == 3.0


def test_downsampling_keeps_spikes_ends_and_order():
    n = 1_000_000
    y = np.linspace(3.0, 1.0, n)
    y[123_457] = 50.0  # a one-step spike
    y[654_321] = -1.0
    y[777] = np.nan
    idx = downsample_index(y, 80)
    assert len(idx) <= 2 * 80 + 2
    assert idx[0] == 0 and idx[-1] == n - 1
    assert 123_457 in idx and 654_321 in idx and 777 not in idx
    assert (np.diff(idx) >= 0).all()


def test_sample_windows_and_copies():
    s = Series()
    for i in range(1, 5001):
        s.add(i, 1.0 / i)
    x, y, sm = s.sample(50, first_step=4001)
    assert x[0] == 4001 and x[-1] == 5000 and len(x) <= 102
    s.add(5001, 0.1)  # the arrays are not pinned by what sample() returned
    x, y, sm = s.sample(10_000)
    assert len(x) == 5001
