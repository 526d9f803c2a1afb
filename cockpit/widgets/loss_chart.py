"""Train and eval loss over steps, with the guide's expected band, on a redraw timer.

Points go into ``Series`` as messages arrive (cheap appends); the plot is rebuilt at most
a few times a second and only when something changed, from at most two points per screen
column, so the redraw costs the same for a hundred points or a million.
"""

from __future__ import annotations

import math

import numpy as np
from rich.markup import escape
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.reactive import reactive
from textual.widgets import Static
from textual_plotext import PlotextPlot

from cockpit.messages import EvalLogged, RunChanged, StepsLogged
from cockpit.series import Series, as_float
from cockpit.themes import chart_colors, hex_color
from engine.run import records
from engine.train.bands import expected_band

REDRAW_HZ = 2
ZOOMS: tuple[int | None, ...] = (None, 10_000, 1_000, 100)
"""Zoom levels: the whole run, then the last N steps."""


def _positive(x: np.ndarray, *ys: np.ndarray) -> tuple[np.ndarray, ...]:
    keep = np.ones(len(x), dtype=bool)
    for y in ys:
        keep &= y > 0
    return (x[keep], *(y[keep] for y in ys))


class SafePlot(PlotextPlot):
    """A plot whose rendering error shows as a line of text instead of closing the cockpit."""

    def render(self):
        try:
            return super().render()
        except Exception as e:  # plotext on data it cannot draw: the run matters more
            return Text(f"chart unavailable: {type(e).__name__}: {e}", style="red")


class LossChart(Vertical):
    smoothing: reactive[bool] = reactive(True)
    """Draw an exponential moving average over the raw loss."""
    log_scale: reactive[bool] = reactive(False)
    zoom: reactive[int] = reactive(0)
    """Index into ZOOMS."""

    def __init__(self, expected: list | None = None, **kw) -> None:
        super().__init__(**kw)
        self.expected = expected
        """The config's expected loss (``health.expected_loss``); None: the guide's table."""
        self.train = Series()
        self.eval = Series(smoothing=0.0)
        self.steps_per_epoch: float | None = None
        self._dirty = True
        self._drawn_size: tuple[int, int] | None = None

    def compose(self) -> ComposeResult:
        yield SafePlot(id="loss-plot")
        yield Static(id="loss-caption")

    def on_mount(self) -> None:
        self.border_title = "Loss"
        self.set_interval(1 / REDRAW_HZ, self.redraw_if_needed)
        self.app.theme_changed_signal.subscribe(self, lambda _: self.redraw())  # light or dark colours
        self.redraw()

    # -- data -------------------------------------------------------------------------------

    def on_steps_logged(self, message: StepsLogged) -> None:
        for r in message.typed:
            if not isinstance(r, records.Step) or r.step is None:
                continue
            self.train.add(float(r.step), as_float(r.loss))
            if r.epoch and r.epoch > 0 and r.step > 0:
                self.steps_per_epoch = r.step / r.epoch
        self._dirty = True

    def on_eval_logged(self, message: EvalLogged) -> None:
        r = message.typed
        if isinstance(r, records.Eval) and r.step is not None:
            self.eval.add(float(r.step), as_float(r.eval_loss))
            self._dirty = True

    def on_run_changed(self, message: RunChanged) -> None:
        r = message.typed
        if isinstance(r, records.Resume) and r.from_step is not None:
            # Steps past the checkpoint will be trained again: the old tail is not the curve.
            self.train.truncate(r.from_step + 1)
            self.eval.truncate(r.from_step + 1)
            self._dirty = True

    def watch_smoothing(self) -> None:
        self._dirty = True

    def watch_log_scale(self) -> None:
        self._dirty = True

    def watch_zoom(self) -> None:
        self._dirty = True

    def cycle_zoom(self) -> None:
        self.zoom = (self.zoom + 1) % len(ZOOMS)

    # -- drawing ----------------------------------------------------------------------------

    def redraw_if_needed(self) -> None:
        plot = self.query_one(PlotextPlot)
        if self._dirty or self._drawn_size != (plot.size.width, plot.size.height):
            self.redraw()

    def redraw(self) -> None:
        """Rebuild the plot's data (the plot renders it on its next paint)."""
        self._dirty = False
        plot = self.query_one(PlotextPlot)
        self._drawn_size = (plot.size.width, plot.size.height)
        plt = plot.plt
        plt.clear_data()
        plt.clear_figure()
        columns = max(plot.size.width - 8, 10)
        c = chart_colors(self.app)
        n = ZOOMS[self.zoom]
        last = self.train.last_step
        first = None if n is None or last is None else last - n + 1
        # Each braille series costs plotext a pass over the whole canvas: at most three here
        # (raw, smoothed, the band's outline); eval points are plain markers.
        x, y, smooth = self.train.sample(columns, first)
        ex, ey, _ = self.eval.sample(columns, first)
        if self.log_scale:  # a log axis has no room for zero or below
            x, y, smooth = _positive(x, y, smooth)
            ex, ey = _positive(ex, ey)
        if len(x):
            # Raw points as dots where they are dense (a column's minimum and maximum): plotext
            # draws a line pixel by pixel in Python, and a noisy loss joined up is a wall of
            # full-height strokes that doubles the redraw and shows no more than the dots do.
            raw = plt.scatter if self.smoothing or len(x) > columns else plt.plot
            if self.smoothing:
                raw(x, y, color=c.train, marker="braille")
                plt.plot(x, smooth, color=c.smooth, marker="braille")
            else:
                raw(x, y, color=c.smooth, marker="braille")
            lo, hi = self._band(x[0], x[-1], columns)
            if lo is not None:
                bx = np.linspace(x[0], x[-1], len(lo))
                if (lo > 0).all():  # one closed outline: along the low edge, back along the high
                    plt.plot(
                        np.concatenate([bx, bx[::-1]]),
                        np.concatenate([lo, hi[::-1]]),
                        color=c.band,
                        marker="braille",
                    )
                else:  # the guide gives only a ceiling here ("< 1.0"): draw the ceiling
                    plt.plot(bx, hi, color=c.band, marker="braille")
        if len(ex):
            plt.scatter(ex, ey, color=c.eval, marker="●")
        if self.log_scale and (len(x) or len(ex)):
            plt.yscale("log")
        plot.refresh()
        self.query_one("#loss-caption", Static).update(self.caption())  # it wraps: its height can change

    def _band(self, x0: float, x1: float, columns: int):
        """The guide's expected train loss (engine.train.bands.expected_band) over the drawn steps."""
        if not self.steps_per_epoch:
            return None, None
        steps = np.linspace(x0, x1, max(columns // 2, 2))
        bands = [expected_band(s / self.steps_per_epoch, table=self.expected).loss for s in steps]
        return np.array([b[0] for b in bands]), np.array([b[1] for b in bands])

    def caption(self) -> str:
        c = {k: hex_color(v) for k, v in vars(chart_colors(self.app)).items() if k != "categories"}
        parts = [f"[{c['smooth']}]━ train[/]"]
        if self.smoothing:
            parts[0] = f"[{c['train']}]━ raw[/] [{c['smooth']}]━ smoothed[/]"
        if len(self.eval):
            parts.append(f"[{c['eval']}]● eval[/]")
        last = self.train.last_step
        if self.steps_per_epoch and last is not None:
            band = expected_band(last / self.steps_per_epoch, table=self.expected)
            lo, hi = band.loss
            expected = f"{lo:.2f}–{hi:.2f}" if lo > 0 else f"< {hi:.2f}"
            whose = "expected" if self.expected else "guide"
            parts.append(f"[{c['band']}]━ {whose} {expected}[/] [dim]({escape(band.note)})[/]")
        elif not len(self.train):
            parts.append("[dim]waiting for the first step…[/]")
        n = ZOOMS[self.zoom]
        view = "whole run" if n is None else f"last {n:,} steps"
        flags = [view, "log" if self.log_scale else "linear"]
        latest = self.train.values[-1] if len(self.train) else None
        if latest is not None and not math.isfinite(latest):
            parts.append(f"[b red]loss {latest}[/]")
        return "  ".join(parts) + f"  [dim]· {' · '.join(flags)}[/]"
