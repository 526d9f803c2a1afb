"""A growing (step, value) series for the charts, and its downsampling for the screen.

A 72-hour run logs millions of points. The series keeps them all in flat float arrays
(16 bytes a point) and the chart only ever draws a few hundred: ``downsample`` keeps the
minimum and the maximum of each screen column, so a one-step spike stays visible however
long the run. Smoothing is an exponential moving average kept point by point as values
arrive, so toggling it costs nothing at redraw time.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left

import numpy as np

SMOOTHING = 0.9
"""Weight of the running average in the smoothed curve (TensorBoard's default is 0.6-0.9)."""


def as_float(value) -> float:
    """A loss from the run log: NaN/Inf arrive as strings ("nan"), missing as None."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


class Series:
    def __init__(self, smoothing: float = SMOOTHING) -> None:
        self.smoothing = smoothing
        self.steps = array("d")
        self.values = array("d")
        self.smooth = array("d")

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def last_step(self) -> float | None:
        return self.steps[-1] if self.steps else None

    def add(self, step: float, value: float) -> None:
        """Append a point; a step at or before the last one replaces the tail from there.

        After a resume the steps past the checkpoint are trained again: the newer records
        are the ones on the continuing curve (the run log's own rule, ``dedupe_steps``).
        """
        if self.steps and step <= self.steps[-1]:
            self.truncate(step)
        prev = self._last_finite_smooth()
        if not math.isfinite(value):
            smooth = prev if prev is not None else math.nan
        elif prev is None:
            smooth = value
        else:
            smooth = self.smoothing * prev + (1 - self.smoothing) * value
        self.steps.append(step)
        self.values.append(value)
        self.smooth.append(smooth)

    def truncate(self, step: float) -> None:
        """Drop the points at ``step`` and after."""
        i = bisect_left(self.steps, step)
        del self.steps[i:], self.values[i:], self.smooth[i:]

    def _last_finite_smooth(self) -> float | None:
        if self.smooth and math.isfinite(self.smooth[-1]):
            return self.smooth[-1]
        return None

    def sample(
        self, columns: int, first_step: float | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Steps, values and smoothed values from ``first_step`` on, downsampled for the screen.

        The numpy views over the arrays never leave this function (a live view would pin
        their buffers and make the next append fail); what comes back are small copies.
        """
        i = 0 if first_step is None else bisect_left(self.steps, first_step)
        if i >= len(self.steps):
            return np.empty(0), np.empty(0), np.empty(0)
        x = np.frombuffer(self.steps, dtype=np.float64)[i:]
        y = np.frombuffer(self.values, dtype=np.float64)[i:]
        s = np.frombuffer(self.smooth, dtype=np.float64)[i:]
        idx = downsample_index(y, columns)
        out = x[idx], y[idx], s[idx]
        del x, y, s
        return out


def downsample_index(y: np.ndarray, columns: int) -> np.ndarray:
    """Indices of at most about ``2 * columns`` points: each bucket's minimum and maximum,
    and the first and last points.

    Non-finite values are left out (the health panel reports NaN/Inf; a chart cannot draw
    them). One vectorised pass: about a millisecond for a million points.
    """
    finite = np.isfinite(y)
    keep = None if finite.all() else np.flatnonzero(finite)
    if keep is not None:
        y = y[keep]
    n = len(y)
    if columns < 1 or n <= 2 * columns:
        idx = np.arange(n)
    else:
        k = -(-n // columns)  # points per bucket
        full = (n // k) * k
        blocks = y[:full].reshape(-1, k)
        base = np.arange(0, full, k)
        i_lo = base + blocks.argmin(axis=1)
        i_hi = base + blocks.argmax(axis=1)
        if full < n:  # the last, partial bucket
            tail = y[full:]
            i_lo = np.append(i_lo, full + int(tail.argmin()))
            i_hi = np.append(i_hi, full + int(tail.argmax()))
        idx = np.empty(2 * len(i_lo) + 2, dtype=np.int64)
        idx[1:-1:2] = np.minimum(i_lo, i_hi)
        idx[2:-1:2] = np.maximum(i_lo, i_hi)
        idx[0], idx[-1] = 0, n - 1  # the curve spans the whole window, to the latest point
    return idx if keep is None else keep[idx]
