"""Where the run is: status, step / total, epoch, phase, loss, lr, grad norm, speed, time, ETA."""

from __future__ import annotations

import math
import statistics
from collections import deque

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from cockpit.messages import ControlRequested, EvalLogged, RunChanged, StepsLogged, WriterState
from cockpit.series import as_float
from engine.evaluate.probes import probing_line as probing_text
from engine.run import records

STATUS_STYLE = {
    "completed": "bold green",
    "early_stopped": "bold green",
    "stopped": "bold yellow",
    "failed": "bold red",
    "error": "bold red",
}


def hms(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "—"
    s = int(seconds)
    d, s = divmod(s, 86400)
    text = f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{d}d {text}" if d else text


def fmt(value, spec: str) -> str:
    v = as_float(value)
    if value is None:
        return "—"
    return format(v, spec) if math.isfinite(v) else str(value)


def bar(frac: float, width: int) -> Text:
    """A one-line progress bar (drawn as text: no widget, no animation timer)."""
    width = max(width, 4)
    filled = min(max(frac, 0.0), 1.0) * width
    full = int(filled)
    half = "╸" if filled - full >= 0.5 and full < width else ""
    rest = width - full - len(half)
    return Text.assemble(("━" * full + half, "bold #0178d4"), ("━" * rest, "#2a2a35"))


def mix_text(r: records.Mix) -> str:
    """The categories seen so far in this phase against the phase's target shares."""
    seen = r.phase_examples or r.examples or {}
    target = r.target or {}
    total = sum(v for v in seen.values() if isinstance(v, (int, float))) or 0
    if not total:
        return "—"
    names = sorted(set(seen) | set(target), key=lambda n: -(target.get(n) or seen.get(n, 0) / total))
    parts = []
    for n in names:
        share = 100 * (seen.get(n) or 0) / total
        goal = f"/{100 * target[n]:.0f}" if isinstance(target.get(n), (int, float)) else ""
        parts.append(f"{n} {share:.0f}{goal}%")
    return " · ".join(parts)


def preparing_text(r: records.Prepare) -> str:
    """Data preparation, its own phase before the first step: done share, rows, rate, ETA."""
    total, done = r.bytes_total or 0, r.bytes_done or 0
    pct = f" {100 * done / total:.0f}%" if total else ""
    rows = f" · {r.rows:,} rows" if r.rows else ""
    rate = f" · {r.rows_per_s:,.0f} rows/s" if r.rows_per_s else ""
    eta = f" · ETA {hms(r.eta_s)}" if r.eta_s is not None else ""
    return f"◌ preparing data{pct}{rows}{rate}{eta}"


REFRESH_S = 0.5
"""Redraws at most twice a second (and once a second for the clock), however fast steps come."""


class ProgressPanel(Static):
    def __init__(self, *, live: bool = True, **kw) -> None:
        super().__init__(**kw)
        self.live = live
        self.last: records.Step | None = None
        self.last_eval: records.Eval | None = None
        self.total: int | None = None
        self.start_t: float | None = None
        self.end: records.End | None = None
        self.phase: str | None = None
        self.mix: records.Mix | None = None
        self.resumed_from: int | None = None
        self.seen_start = False
        self.preparing: records.Prepare | None = None  # the last `prepare` record while the data is prepared
        self.writer_alive: bool | None = None
        self.recent_s_per_step: deque[float] = deque(maxlen=50)
        self.probing: dict | None = None  # the last `probing` record while probes hold the step
        self._dirty = True
        self._ticks = 0

    def on_mount(self) -> None:
        self.border_title = "Progress"
        self.set_interval(REFRESH_S, self._tick)
        self.show()

    def _tick(self) -> None:
        self._ticks += 1
        if self._dirty or self._ticks % 2 == 0:  # the elapsed clock moves once a second
            self.show()

    def changed(self) -> None:
        self._dirty = True

    # -- records ----------------------------------------------------------------------------

    def on_steps_logged(self, message: StepsLogged) -> None:
        self.probing = None  # a step after them: the probes are over
        steps = [r for r in message.typed if isinstance(r, records.Step)]
        for r in steps:
            if r.s_per_step and r.s_per_step > 0:
                self.recent_s_per_step.append(r.s_per_step)
            if r.phase:
                self.phase = r.phase
            if r.max_steps and r.max_steps > 0:
                self.total = r.max_steps
        self.last = steps[-1] if steps else self.last
        self.changed()

    def on_eval_logged(self, message: EvalLogged) -> None:
        r = message.typed
        self.last_eval = r if isinstance(r, records.Eval) else self.last_eval
        self.changed()

    def on_run_changed(self, message: RunChanged) -> None:
        r = message.typed
        if isinstance(r, records.Start):
            self.seen_start = True
            self.start_t = r.t
            self.end = None
            self.total = r.max_steps if r.max_steps is not None else self.total
        elif isinstance(r, records.TrainBegin) and r.max_steps is not None:
            self.total = r.max_steps
        elif isinstance(r, records.Prepare):
            self.preparing = None if r.done else r
        elif isinstance(r, records.Resume):
            self.resumed_from = r.from_step
        elif isinstance(r, records.Phase):
            self.phase = r.name or "?"
        elif isinstance(r, records.Probing):
            self.probing = message.record
        elif isinstance(r, records.Mix):
            self.mix = r
        elif isinstance(r, records.End):
            self.end = r
        self.changed()

    def on_writer_state(self, message: WriterState) -> None:
        self.writer_alive = message.alive
        self.changed()

    def on_control_requested(self, message: ControlRequested) -> None:
        self.show()  # the app's RunState has the request: show it now

    # -- view -------------------------------------------------------------------------------

    def status(self) -> Text:
        if self.end is not None:
            status = self.end.status or "ended"
            return Text(f"■ {status}", style=STATUS_STYLE.get(status, "bold"))
        if self.writer_alive is False and self.seen_start:
            if getattr(getattr(self.app, "source", None), "loading", False):
                at = f": step {self.last.step:,}" if self.last is not None and self.last.step else ""
                return Text(f"◌ loading the run log{at}…", style="dim")  # its end record is still to come
            return Text("■ not running (no end record: killed?)", style="bold red")
        live = self._live_state()
        if live is not None:
            return live
        if self.probing is not None and self.end is None:
            return Text(f"◎ {probing_text(self.probing)}", style="bold cyan")
        if not self.seen_start and self.preparing is not None:
            return Text(preparing_text(self.preparing), style="yellow")
        if not self.seen_start and self.last is None:
            return Text("◌ loading model and data…" if self.live else "◌ waiting for records…", style="dim")
        if self.last is None:
            return Text("◌ starting…", style="dim")
        return Text("▶ training" if self.live else "▶ running", style="bold green")

    def _live_state(self) -> Text | None:
        """Stopping, stalled, pausing, resuming or paused: from the app's ``RunState``, the one
        place the cockpit holds where the run stands."""
        state = getattr(self.app, "state", None)
        if state is None or not state.live:
            return None
        at = f" at step {state.step:,}" if state.step is not None else ""
        if state.stop_asked:
            return Text("◌ stopping: saving at the next step", style="bold yellow")
        if state.stalled_s is not None:
            return Text(f"◌ stalled{at}: no sign for {state.stalled_s:,} s", style="bold red")
        if state.asked == "pause":
            return Text("◌ pausing at the next step", style="yellow")
        if state.asked == "resume":
            return Text("◌ resuming…", style="yellow")
        if state.phase == "paused":
            return Text(f"‖ paused{at}", style="bold yellow")
        return None

    def eta_s(self) -> float | None:
        if self.end is not None or self.writer_alive is False or not self.last or not self.total:
            return None
        state = getattr(self.app, "state", None)
        if state is not None and state.stalled_s is not None:
            return None  # no ETA from a trainer that has stopped moving
        if not self.recent_s_per_step:
            return None
        left = self.total - int(self.last.step or 0)
        return max(left, 0) * statistics.median(self.recent_s_per_step)

    def elapsed_s(self) -> float | None:
        if self.start_t is None:
            return None
        until = self.end.t if self.end is not None else self.app.clock()
        return max(float(until) - float(self.start_t), 0.0)

    def show(self) -> None:
        r = self.last or records.Step()
        step = r.step
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="dim", no_wrap=True, min_width=6)
        grid.add_column(overflow="fold")  # a narrow panel wraps a value rather than cut it
        grid.add_row("status", self.status())
        total = f"/{self.total:,}" if self.total else ""
        pct = f"  {100 * step / self.total:.1f}%" if step is not None and self.total else ""
        grid.add_row("step", f"{step:,}{total}{pct}" if step is not None else "—")
        epoch = f"{fmt(r.epoch, '.2f')}"
        if self.phase:
            epoch += f"  phase [b]{self.phase}[/]"
        grid.add_row("epoch", epoch)
        loss = f"{fmt(r.loss, '.4f')}"
        if self.last_eval:
            loss += f"  eval {fmt(self.last_eval.eval_loss, '.4f')}"
            loss += f"  ppl {fmt(self.last_eval.perplexity, '.2f')}"
        grid.add_row("loss", loss)
        grid.add_row("lr", f"{fmt(r.lr, '.2e')}  grad norm {fmt(r.grad_norm, '.3f')}")
        speed = f"{fmt(r.tokens_per_s, ',.0f')} tok/s"
        if self.probing is not None and self.end is None:
            speed = "— training waits for the probes (p, s or q cuts them short)"
        if r.mfu is not None:
            speed += f"  MFU {100 * r.mfu:.0f}%"
        if self.recent_s_per_step:
            speed += f"  {statistics.median(self.recent_s_per_step):.2f} s/step"
        grid.add_row("speed", speed)
        grid.add_row("time", f"{hms(self.elapsed_s())}  ETA {hms(self.eta_s())}")
        if self.mix:
            grid.add_row("mix", mix_text(self.mix))
        if self.resumed_from is not None:
            grid.add_row("resumed", f"from step {self.resumed_from:,}")
        if self.total:
            frac = (step or 0) / self.total
            width = max(self.content_size.width - 12, 4)
            grid.add_row("", Text.assemble(bar(frac, width), f" {100 * frac:3.0f}%"))
        self._dirty = False
        self.update(grid, layout=True)  # a wrapped value can change the height
