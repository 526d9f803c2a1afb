"""Runs side by side: each run's loss and eval curves on a shared x-axis, and how their configs differ.

The guide's 10% run has thousands of steps and its full run hundreds of thousands, so both are
read once into compact arrays (only the fields a curve needs, decoded by msgspec) and drawn from
a downsampled copy: ``downsample`` keeps each bucket's first, lowest and highest points, so a
spike survives at any width. The x-axis is the step, the epoch (runs of different sizes line up
by how much of their data they have seen), the tokens, or the training time (the time between
a run's start and end records, gaps between restarts left out).
"""

from __future__ import annotations

import bisect
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

AXES = ("step", "epoch", "tokens", "time")


class _Line(msgspec.Struct):
    """The fields of a run-log line a curve needs; the rest of each record is skipped unread."""

    kind: str
    t: float = 0.0
    step: int | None = None
    loss: float | str | None = None
    epoch: float | None = None
    tokens: int | None = None
    eval_loss: float | str | None = None


@dataclass
class RunCurves:
    name: str
    run_dir: Path
    step: array = field(default_factory=lambda: array("d"))
    epoch: array = field(default_factory=lambda: array("d"))
    tokens: array = field(default_factory=lambda: array("d"))
    time: array = field(default_factory=lambda: array("d"))
    loss: array = field(default_factory=lambda: array("d"))
    eval_step: array = field(default_factory=lambda: array("d"))
    eval_loss: array = field(default_factory=lambda: array("d"))
    ended: str | None = None  # the last end record's status; None: running, or killed
    bad_lines: int = 0

    def x(self, axis: str) -> array:
        if axis not in AXES:
            raise ValueError(f"axis {axis!r}: one of {', '.join(AXES)}")
        return getattr(self, axis)

    def eval_x(self, axis: str) -> list[float]:
        """Each evaluation's position on ``axis``: the value at its step (interpolated between steps)."""
        if axis == "step":
            return list(self.eval_step)
        xs, steps = self.x(axis), self.step
        out = []
        for s in self.eval_step:
            i = bisect.bisect_left(steps, s)
            if i < len(steps) and steps[i] == s:
                out.append(xs[i])
            elif 0 < i < len(steps):
                f = (s - steps[i - 1]) / (steps[i] - steps[i - 1])
                out.append(xs[i - 1] + f * (xs[i] - xs[i - 1]))
            else:
                out.append(xs[min(i, len(xs) - 1)] if xs else float("nan"))
        return out


def _num(v) -> float:
    try:
        return float(v)  # "nan"/"inf" as the run log writes a non-finite loss
    except (TypeError, ValueError):
        return float("nan")


def load_curves(run_dir: str | Path, name: str | None = None) -> RunCurves:
    """The run's step and eval curves; after a resume the last record of each step wins."""
    reader = CurveReader(run_dir, name)
    reader.read()
    if reader.pending.strip():  # a torn last line of a finished log
        reader.curves.bad_lines += 1
    return reader.curves


def _truncate(xs: array, at: int) -> None:
    del xs[at:]


class CurveReader:
    """A run's curves read once and then followed: ``read()`` decodes only the lines added since
    the last call (a live run's log grows; re-reading a million-step log each second would not do).

    A step recorded again (a resume from an earlier checkpoint) drops the points from that step
    on, as the resumed run trains them again: the last record of each step wins.
    """

    def __init__(self, run_dir: str | Path, name: str | None = None) -> None:
        run_dir = Path(run_dir)
        self.path = run_dir / "events.jsonl" if run_dir.is_dir() else run_dir
        self.curves = RunCurves(name or self.path.parent.name, self.path.parent)
        self.offset = 0
        self.pending = b""
        self._decode = msgspec.json.Decoder(_Line).decode
        self._trained = 0.0  # training seconds before this process's start
        self._began: float | None = None  # this process's start time

    def read(self) -> int:
        """Decode the complete lines written since the last call; the number of new points."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except OSError:
            return 0
        self.offset += len(chunk)
        data = self.pending + chunk
        cut = data.rfind(b"\n") + 1
        self.pending = data[cut:]
        before = len(self.curves.step) + len(self.curves.eval_step)
        for line in data[:cut].splitlines():
            self._line(line)
        return len(self.curves.step) + len(self.curves.eval_step) - before

    def _line(self, line: bytes) -> None:
        c = self.curves
        try:
            r = self._decode(line)
        except msgspec.DecodeError:
            c.bad_lines += bool(line.strip())
            return
        if r.kind == "step" and r.step is not None:
            now = self._trained + (r.t - self._began if self._began is not None else 0.0)
            if c.step and r.step <= c.step[-1]:
                at = bisect.bisect_left(c.step, r.step)
                for xs in (c.step, c.loss, c.epoch, c.tokens, c.time):
                    _truncate(xs, at)
            c.step.append(r.step)
            c.loss.append(_num(r.loss))
            c.epoch.append(_num(r.epoch))
            c.tokens.append(_num(r.tokens))
            c.time.append(now)
        elif r.kind == "eval" and r.step is not None and r.eval_loss is not None:
            if c.eval_step and r.step <= c.eval_step[-1]:
                at = bisect.bisect_left(c.eval_step, r.step)
                _truncate(c.eval_step, at)
                _truncate(c.eval_loss, at)
            c.eval_step.append(r.step)
            c.eval_loss.append(_num(r.eval_loss))
        elif r.kind == "start":
            self._began, c.ended = r.t, None
        elif r.kind == "end":
            self._trained += r.t - self._began if self._began is not None else 0.0
            self._began, c.ended = None, "ended"


def downsample(xs, ys, width: int) -> tuple[list[float], list[float]]:
    """At most ~3 points a bucket over ``width`` buckets: the first, the lowest and the highest.

    The lowest and highest are the first such point among the bucket's non-NaN ones (an infinite
    loss counts, so a blow-up shows). A live million-step run is downsampled on the UI thread
    each time it grows, so a bucket without NaN is scanned by the builtins (``sum`` finds a NaN,
    ``min``, ``max`` and ``index`` run in C), not point by point in Python. ``xs`` is only indexed
    (a ``range`` gives the indices back).
    """
    n = len(xs)
    if n <= 3 * width or width <= 0:
        return list(xs), list(ys)
    ox: list[float] = []
    oy: list[float] = []
    for b in range(width):
        lo, hi = b * n // width, (b + 1) * n // width
        if lo >= hi:
            continue
        for i in sorted({lo, *_extremes(ys, lo, hi)}):
            ox.append(xs[i])
            oy.append(ys[i])
    return ox, oy


def _extremes(ys, lo: int, hi: int) -> tuple[int, ...]:
    """The index of the first lowest and of the first highest non-NaN value in ``ys[lo:hi]``."""
    seg = ys[lo:hi]
    total = sum(seg)
    if total == total:  # no NaN (nor inf beside -inf): the builtins' answers are the first ones
        return lo + seg.index(min(seg)), lo + seg.index(max(seg))
    finite = [i for i in range(lo, hi) if ys[i] == ys[i]]
    if not finite:
        return ()
    return min(finite, key=ys.__getitem__), max(finite, key=ys.__getitem__)


def _flat(d, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


RUN_OWN = ("run_name", "output_dir", "logs_dir", "gate.run", "wandb_name", "wandb_run_id")


def config_diff(configs: list[dict], skip: tuple[str, ...] = ()) -> list[tuple[str, list[object]]]:
    """Keys whose values differ between the configs, with each config's value (None: not set)."""
    flats = [_flat(c) for c in configs]
    keys = sorted(set().union(*flats)) if flats else []
    rows = []
    for k in keys:
        if k in skip:
            continue
        values = [f.get(k) for f in flats]
        if any(v != values[0] for v in values[1:]):
            rows.append((k, values))
    return rows
