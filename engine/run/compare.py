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
    run_dir = Path(run_dir)
    path = run_dir / "events.jsonl" if run_dir.is_dir() else run_dir
    run_dir = path.parent
    decode = msgspec.json.Decoder(_Line).decode
    steps: dict[int, tuple[float, float, float, float]] = {}
    evals: dict[int, float] = {}
    out = RunCurves(name or run_dir.name, run_dir)
    trained, began = 0.0, None  # training seconds before this process's start, its start time
    with open(path, "rb") as f:
        for line in f:
            try:
                r = decode(line)
            except msgspec.DecodeError:
                out.bad_lines += bool(line.strip())
                continue
            if r.kind == "step" and r.step is not None:
                now = trained + (r.t - began if began is not None else 0.0)
                steps[r.step] = (_num(r.loss), _num(r.epoch), _num(r.tokens), now)
            elif r.kind == "eval" and r.step is not None and r.eval_loss is not None:
                evals[r.step] = _num(r.eval_loss)
            elif r.kind == "start":
                began, out.ended = r.t, None
            elif r.kind == "end":
                trained += r.t - began if began is not None else 0.0
                began, out.ended = None, "ended"
    for s in sorted(steps):
        loss, epoch, tokens, t = steps[s]
        out.step.append(s)
        out.loss.append(loss)
        out.epoch.append(epoch)
        out.tokens.append(tokens)
        out.time.append(t)
    for s in sorted(evals):
        out.eval_step.append(s)
        out.eval_loss.append(evals[s])
    return out


def downsample(xs, ys, width: int) -> tuple[list[float], list[float]]:
    """At most ~3 points a bucket over ``width`` buckets: the first, the lowest and the highest."""
    n = len(xs)
    if n <= 3 * width or width <= 0:
        return list(xs), list(ys)
    ox: list[float] = []
    oy: list[float] = []
    for b in range(width):
        lo, hi = b * n // width, (b + 1) * n // width
        if lo >= hi:
            continue
        idx = {lo}
        finite = [i for i in range(lo, hi) if ys[i] == ys[i]]
        if finite:
            idx.add(min(finite, key=ys.__getitem__))
            idx.add(max(finite, key=ys.__getitem__))
        for i in sorted(idx):
            ox.append(xs[i])
            oy.append(ys[i])
    return ox, oy


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
