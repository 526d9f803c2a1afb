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


def mix_text(r: dict) -> str:
    """The categories seen so far in this phase against the phase's target shares."""
    seen = r.get("phase_examples") or r.get("examples") or {}
    target = r.get("target") or {}
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


def preparing_text(r: dict) -> str:
    """Data preparation, its own phase before the first step: done share, rows, rate, ETA."""
    total, done = r.get("bytes_total") or 0, r.get("bytes_done") or 0
    pct = f" {100 * done / total:.0f}%" if total else ""
    rows = f" · {r.get('rows', 0):,} rows" if r.get("rows") else ""
    rate = f" · {r['rows_per_s']:,.0f} rows/s" if r.get("rows_per_s") else ""
    eta = f" · ETA {hms(r['eta_s'])}" if isinstance(r.get("eta_s"), (int, float)) else ""
    return f"◌ preparing data{pct}{rows}{rate}{eta}"


REFRESH_S = 0.5
"""Redraws at most twice a second (and once a second for the clock), however fast steps come."""


class ProgressPanel(Static):
    def __init__(self, *, live: bool = True, **kw) -> None:
        super().__init__(**kw)
        self.live = live
        self.last: dict | None = None
        self.last_eval: dict | None = None
        self.total: int | None = None
        self.start_t: float | None = None
        self.end: dict | None = None
        self.paused = False
        self.paused_step: int | None = None
        self.pending: str | None = None
        self.phase: str | None = None
        self.mix: dict | None = None
        self.resumed_from: int | None = None
        self.seen_start = False
        self.preparing: dict | None = None  # the last `prepare` record while the data is prepared
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
        for r in message.records:
            sps = r.get("s_per_step")
            if isinstance(sps, (int, float)) and sps > 0:
                self.recent_s_per_step.append(float(sps))
            if r.get("phase"):
                self.phase = str(r["phase"])
            if isinstance(r.get("max_steps"), int) and r["max_steps"] > 0:
                self.total = r["max_steps"]
        self.last = message.records[-1]
        if self.pending == "resume":
            self.pending = None
        self.changed()

    def on_eval_logged(self, message: EvalLogged) -> None:
        self.last_eval = message.record
        self.changed()

    def on_run_changed(self, message: RunChanged) -> None:
        r = message.record
        kind = r["kind"]
        if kind == "start":
            self.seen_start = True
            self.start_t = r.get("t")
            self.end = None
            if isinstance(r.get("max_steps"), int):
                self.total = r["max_steps"]
        elif kind == "train_begin" and isinstance(r.get("max_steps"), int):
            self.total = r["max_steps"]
        elif kind == "prepare":
            self.preparing = None if r.get("done") else r
        elif kind == "resume":
            self.resumed_from = r.get("from_step")
        elif kind == "paused":
            self.paused = True
            self.paused_step = r.get("step")
            if self.pending == "pause":
                self.pending = None
        elif kind == "resumed":
            self.paused = False
            if self.pending == "resume":
                self.pending = None
        elif kind == "phase":
            self.phase = str(r.get("name") or r.get("phase") or "?")
        elif kind == "probing":
            self.probing = r
        elif kind == "mix":
            self.mix = r
        elif kind == "end":
            self.end = r
            self.paused, self.pending = False, None
        self.changed()

    def on_writer_state(self, message: WriterState) -> None:
        self.writer_alive = message.alive
        self.changed()

    def on_control_requested(self, message: ControlRequested) -> None:
        if message.action in ("pause", "resume", "stop"):
            self.pending = message.action
        self.show()

    # -- view -------------------------------------------------------------------------------

    def status(self) -> Text:
        if self.end is not None:
            status = str(self.end.get("status", "ended"))
            return Text(f"■ {status}", style=STATUS_STYLE.get(status, "bold"))
        if self.writer_alive is False and self.seen_start:
            return Text("■ not running (no end record: killed?)", style="bold red")
        if self.pending == "stop":
            return Text("◌ stopping: saving at the next step", style="bold yellow")
        if self.pending == "pause":
            return Text("◌ pausing at the next step", style="yellow")
        if self.pending == "resume":
            return Text("◌ resuming…", style="yellow")
        if self.paused:
            at = f" at step {self.paused_step:,}" if isinstance(self.paused_step, int) else ""
            return Text(f"‖ paused{at}", style="bold yellow")
        if self.probing is not None and self.end is None:
            return Text(f"◎ {probing_text(self.probing)}", style="bold cyan")
        if not self.seen_start and self.preparing is not None:
            return Text(preparing_text(self.preparing), style="yellow")
        if not self.seen_start and self.last is None:
            return Text("◌ loading model and data…" if self.live else "◌ waiting for records…", style="dim")
        if self.last is None:
            return Text("◌ starting…", style="dim")
        return Text("▶ training" if self.live else "▶ running", style="bold green")

    def eta_s(self) -> float | None:
        if self.end is not None or self.writer_alive is False or not self.last or not self.total:
            return None
        if not self.recent_s_per_step:
            return None
        left = self.total - int(self.last.get("step", 0))
        return max(left, 0) * statistics.median(self.recent_s_per_step)

    def elapsed_s(self) -> float | None:
        if self.start_t is None:
            return None
        until = self.end.get("t") if self.end is not None else self.app.clock()
        return max(float(until) - float(self.start_t), 0.0)

    def show(self) -> None:
        r = self.last or {}
        step = r.get("step")
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="dim", no_wrap=True, min_width=6)
        grid.add_column(overflow="fold")  # a narrow panel wraps a value rather than cut it
        grid.add_row("status", self.status())
        total = f"/{self.total:,}" if self.total else ""
        pct = f"  {100 * step / self.total:.1f}%" if step is not None and self.total else ""
        grid.add_row("step", f"{step:,}{total}{pct}" if step is not None else "—")
        epoch = f"{fmt(r.get('epoch'), '.2f')}"
        if self.phase:
            epoch += f"  phase [b]{self.phase}[/]"
        grid.add_row("epoch", epoch)
        loss = f"{fmt(r.get('loss'), '.4f')}"
        if self.last_eval:
            loss += f"  eval {fmt(self.last_eval.get('eval_loss'), '.4f')}"
            loss += f"  ppl {fmt(self.last_eval.get('perplexity'), '.2f')}"
        grid.add_row("loss", loss)
        grid.add_row("lr", f"{fmt(r.get('lr'), '.2e')}  grad norm {fmt(r.get('grad_norm'), '.3f')}")
        speed = f"{fmt(r.get('tokens_per_s'), ',.0f')} tok/s"
        if self.probing is not None and self.end is None:
            speed = "— training waits for the probes (p, s or q cuts them short)"
        if isinstance(r.get("mfu"), (int, float)):
            speed += f"  MFU {100 * r['mfu']:.0f}%"
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
