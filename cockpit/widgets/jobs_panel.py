"""This session's background jobs (merge, quantize, export, push): a line each, live.

The jobs run in their own threads (``engine.run.jobs``); the panel reads their state on a timer a
few times a second, so a job never waits on the UI and the UI never waits on a job. Hidden
until the first job starts. When a job ends the panel says so (a toast) and posts
``JobEnded`` to every widget with the class ``job-view`` (the checklist re-measures).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.text import Text
from textual.widgets import Static

from cockpit.messages import JobEnded
from engine.run import jobs
from engine.run.rundir import RunDir

REFRESH_S = 0.25
SHOWN = 4
BAR = 16


@dataclass
class Entry:
    label: str
    job: jobs.Job
    summary: Callable[[Any], str]
    """The result of a finished job in one line."""
    note: str = ""
    tag: tuple = ()
    """What the job acted on, for whoever asks later (the ship menu: was this dry-run already?)."""
    announced: bool = False

    @property
    def outcome(self) -> str:
        return self.summary(self.job.result) if self.job.state == "done" else ""


class JobsPanel(Static):
    def __init__(self, **kw) -> None:
        super().__init__("", **kw)
        self.entries: list[Entry] = []

    def on_mount(self) -> None:
        self.border_title = "Jobs"
        self.set_interval(REFRESH_S, self.tick)

    def start(
        self,
        label: str,
        fn: Callable[..., Any],
        args: tuple = (),
        kwargs: dict | None = None,
        *,
        summary: Callable[[Any], str] = str,
        note: str = "",
        tag: tuple = (),
    ) -> Entry:
        """Run ``fn(*args, progress=..., **kwargs)`` in a job thread and show it here."""
        entry = Entry(label, jobs.start(label.split()[0], fn, *args, **(kwargs or {})), summary, note, tag)
        self.entries.append(entry)
        self.add_class("-active")
        self.tick()
        return entry

    def tick(self) -> None:
        if not self.entries:
            return
        for entry in self.entries:
            if entry.job.finished and not entry.announced:
                entry.announced = True
                self._announce(entry)
        self.update(Text("\n").join(self.line(e) for e in self.entries[-SHOWN:]))
        states = [e.job.state for e in self.entries]
        counts = {s: states.count(s) for s in ("running", "done", "failed") if s in states}
        self.border_subtitle = " · ".join(f"{n} {s}" for s, n in counts.items())

    def line(self, entry: Entry) -> Text:
        job = entry.job
        took = f"{job.seconds:.0f}s"
        if job.state == "failed":
            text = Text.assemble(
                ("✗ ", "bold red"), (entry.label, "bold"), "  failed: ", (job.error or "", "red")
            )
        elif job.state == "done":
            text = Text.assemble(
                ("✓ ", "bold green"), (entry.label, "bold"), f"  {entry.outcome}  ", (took, "dim")
            )
        else:
            filled = round(job.fraction * BAR)
            text = Text.assemble(
                ("▶ ", "bold yellow"),
                (entry.label, "bold"),
                "  ",
                ("█" * filled, "green"),
                ("░" * (BAR - filled), "dim"),
                f" {job.fraction * 100:3.0f}%  {job.message}",
                (f"  ({entry.note})" if entry.note else "", "yellow"),
                (f"  {took}", "dim"),
            )
        return text

    def _announce(self, entry: Entry) -> None:
        job = entry.job
        if job.state == "done":
            self.app.notify(entry.outcome, title=f"{entry.label}: done", timeout=10)
        else:
            where = self._keep_traceback(entry)
            self.app.notify(
                (job.error or "") + (f"\n(traceback in {where})" if where else ""),
                title=f"{entry.label}: failed",
                severity="error",
                timeout=20,
            )
        for widget in self.app.query(".job-view"):
            widget.post_message(JobEnded(job))

    def _keep_traceback(self, entry: Entry) -> Path | None:
        """A bug's traceback goes to the run folder, never over the screen."""
        run_dir = getattr(getattr(self.app, "source", None), "run_dir", None)
        if entry.job.traceback is None or not run_dir or not Path(run_dir).is_dir():
            return None
        path = RunDir(run_dir).jobs_log
        with open(path, "a") as f:
            f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {entry.label}\n{entry.job.traceback}\n")
        return path
