"""The Compare tab: runs side by side (``attach A B ...`` or ``a`` to add one by folder).

Each run's loss and eval curves overlaid on one x-axis (``x`` cycles step, epoch, tokens, time:
runs of different sizes line up by epoch), each run's expected loss band as the dashboard draws
it (its own ``health.expected_loss`` or the guide's), and the keys where the configs differ.
A run is read once (``engine.run.compare.CurveReader``, off the UI thread) and then followed:
every second only the lines added since are decoded. The chart is drawn from
``compare.downsample`` at its width, so a million-step run costs a redraw what a thousand do.
"""

from __future__ import annotations

import math
from pathlib import Path

from rich.markup import escape
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from cockpit.widgets.loss_chart import SafePlot
from cockpit.widgets.table import Table
from engine.run.compare import AXES, RUN_OWN, CurveReader, config_diff, downsample
from engine.run.rundir import run_config_raw
from engine.train.bands import expected_band

FOLLOW_S = 1.0
COLORS = ((0, 200, 255), (255, 160, 40), (200, 90, 255), (90, 220, 120), (255, 90, 90), (230, 230, 80))
DIFF_VALUE_CHARS = 28


class ComparedRun:
    def __init__(self, run_dir: Path) -> None:
        self.reader = CurveReader(run_dir)
        self.config = run_config_raw(self.reader.path.parent) or {}
        self.expected = (self.config.get("health") or {}).get("expected_loss")
        self.loaded = False
        self.drawn: tuple | None = None
        """(key, series) of the last redraw: a run that has not grown is not downsampled again."""

    @property
    def curves(self):
        return self.reader.curves


class ComparePane(Vertical):
    def __init__(self, run_dirs: list[Path], **kw) -> None:
        super().__init__(**kw)
        self.runs = [ComparedRun(Path(d)) for d in run_dirs]
        self.axis = "epoch"
        self._dirty = True
        self._drawn_width = 0

    def compose(self) -> ComposeResult:
        yield SafePlot(id="compare-plot")
        yield Static(id="compare-caption")
        yield Table(id="compare-diff", show_cursor=False, zebra_stripes=True)

    def on_mount(self) -> None:
        self.border_title = "Runs side by side"
        self.set_interval(FOLLOW_S, self.follow)
        self.set_interval(0.5, self.redraw_if_needed)
        for run in self.runs:
            self._load(run)
        self.show_diff()

    # -- runs -------------------------------------------------------------------------------

    def add_run(self, run_dir: Path) -> None:
        if any(r.reader.path.parent.resolve() == Path(run_dir).resolve() for r in self.runs):
            return
        run = ComparedRun(Path(run_dir))
        self.runs.append(run)
        self._load(run)
        self.show_diff()

    def _load(self, run: ComparedRun) -> None:
        def work() -> None:
            run.reader.read()
            run.loaded = True
            self._dirty = True

        self.run_worker(work, thread=True, group="compare-load")

    def follow(self) -> None:
        """A live run's new lines (a finished run reads nothing new: one stat and an empty read)."""
        for run in self.runs:
            if run.loaded and run.reader.read():
                self._dirty = True

    def cycle_axis(self) -> None:
        self.axis = AXES[(AXES.index(self.axis) + 1) % len(AXES)]
        self._dirty = True
        self.redraw()

    # -- drawing ----------------------------------------------------------------------------

    def redraw_if_needed(self) -> None:
        plot = self.query_one(SafePlot)
        if self._dirty or self._drawn_width != plot.size.width:
            self.redraw()

    def series(self, run: ComparedRun, columns: int):
        """The drawn loss and eval points of one run on the current axis: (x, y), (ex, ey), indices."""
        c = run.curves
        key = (self.axis, columns, len(c.step), len(c.eval_step))
        if run.drawn is not None and run.drawn[0] == key:
            return run.drawn[1]
        n = len(c.step)
        idx, loss = downsample(range(n), c.loss, columns)  # indices back: x and band at the same points
        xs = c.x(self.axis)
        x = [xs[int(i)] for i in idx]
        out = (x, loss), (c.eval_x(self.axis), list(c.eval_loss)), [int(i) for i in idx]
        run.drawn = (key, out)
        return out

    def redraw(self) -> None:
        self._dirty = False
        plot = self.query_one(SafePlot)
        self._drawn_width = plot.size.width
        plt = plot.plt
        plt.clear_data()
        plt.clear_figure()
        columns = max(plot.size.width - 8, 10)
        for n, run in enumerate(self.runs):
            if not run.loaded or not len(run.curves.step):
                continue
            color = COLORS[n % len(COLORS)]
            (x, y), (ex, ey), idx = self.series(run, columns)
            finite = [(a, b) for a, b in zip(x, y, strict=True) if math.isfinite(b)]
            if finite:
                plt.scatter([a for a, _ in finite], [b for _, b in finite], color=color, marker="braille")
            self._band(plt, run, x, idx, color)
            if ex:
                plt.scatter(ex, ey, color=color, marker="●")
        plt.xlabel(self.axis)
        plot.refresh()
        self.query_one("#compare-caption", Static).update(self.caption())

    def _band(self, plt, run: ComparedRun, x: list, idx: list[int], color) -> None:
        """The run's expected loss ceiling (the dashboard's band) along its own points, dimmed."""
        epochs = run.curves.epoch
        step = max(len(idx) // 40, 1)
        pts = [(x[i], epochs[idx[i]]) for i in range(0, len(idx), step) if math.isfinite(epochs[idx[i]])]
        if len(pts) < 2:
            return
        hi = [expected_band(e, table=run.expected).loss[1] for _, e in pts]
        dim = tuple(v // 2 for v in color)
        plt.plot([p for p, _ in pts], hi, color=dim, marker="braille")

    def caption(self) -> str:
        lines = [f"[b]x: {self.axis}[/] [dim](x cycles step/epoch/tokens/time · a adds a run · ● eval)[/]"]
        for n, run in enumerate(self.runs):
            r, g, b = COLORS[n % len(COLORS)]
            lines.append(f"[rgb({r},{g},{b})]━[/] {escape(run_line(run))}")
        return "\n".join(lines)

    def show_diff(self) -> None:
        table = self.query_one("#compare-diff", DataTable)
        table.clear(columns=True)
        rows = config_diff([r.config for r in self.runs], skip=RUN_OWN)
        table.add_columns("config key", *[r.curves.name for r in self.runs])
        for key, values in rows:
            table.add_row(key, *[short(v) for v in values])
        if not rows:
            table.add_row("(same config)", *["" for _ in self.runs])

    def activate(self) -> None:
        self.query_one("#compare-diff", DataTable).focus()


def short(v) -> str:
    text = "—" if v is None else str(v)
    return text if len(text) <= DIFF_VALUE_CHARS else text[: DIFF_VALUE_CHARS - 1] + "…"


def run_line(run: ComparedRun) -> str:
    """One run's legend: where it stands, its latest losses, and its band there."""
    c = run.curves
    if not run.loaded:
        return f"{c.name}: loading the run log…"
    if not len(c.step):
        return f"{c.name}: no steps yet"
    parts = [f"{c.name}: step {int(c.step[-1]):,}", f"epoch {c.epoch[-1]:.2f}", f"loss {c.loss[-1]:.3f}"]
    if len(c.eval_loss):
        ev = c.eval_loss[-1]
        ppl = math.exp(ev) if ev < 50 else float("inf")
        parts.append(f"eval {ev:.3f} (ppl {ppl:.2f})")
    if math.isfinite(c.epoch[-1]):
        band = expected_band(c.epoch[-1], table=run.expected)
        lo, hi = band.loss
        whose = "expected" if run.expected else "guide"
        parts.append(f"{whose} {lo:.2f}–{hi:.2f}" if lo > 0 else f"{whose} < {hi:.2f}")
        parts.append(f"ppl < {band.ppl[1]:.1f}")
    parts.append("finished" if c.ended else "live or killed")
    return " · ".join(parts)
