"""Is the trainer still there? Its last sign of life: the newest of the run log and a heartbeat file.

A trainer whose log is quiet (a long step, a long save, a pause) touches ``logs/<run>/heartbeat``
from a thread of its own every ``interval()`` seconds, and only then: the training step never
waits on it, and a run that writes records costs nothing more. A reader (the cockpit, the
launcher of a headless job) takes ``age()``: seconds since the last record or heartbeat. Past
``stall_after()`` the trainer is stalled: stopped (SIGSTOP, a debugger), hung, or its machine is
gone, and speed and ETA are no longer current.

``LEVIATHAN_HEARTBEAT_S`` sets the interval (default 5 s; tests use less); stalled is four beats
missed. Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

from engine.run.rundir import RunDir

ENV = "LEVIATHAN_HEARTBEAT_S"
DEFAULT_S = 5.0
MISSED = 4


def interval() -> float:
    try:
        return max(float(os.environ.get(ENV) or DEFAULT_S), 0.05)
    except ValueError:
        return DEFAULT_S


def stall_after() -> float:
    return MISSED * interval()


class Heartbeat:
    """The trainer's side: a daemon thread that touches the heartbeat file when the log is quiet."""

    def __init__(self, run_dir) -> None:
        self.folder = RunDir(run_dir)
        self.every = interval()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def __enter__(self) -> Heartbeat:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _beat(self) -> None:
        while not self._stop.wait(self.every):
            if age(self.folder.path) >= self.every:
                # a full or read-only disk: the readers see an older sign, nothing breaks
                with contextlib.suppress(OSError):
                    self.folder.heartbeat.touch()


def last_sign(run_dir) -> float | None:
    """Unix time of the run's last record or heartbeat (None when neither exists)."""
    folder = RunDir(run_dir)
    newest = 0.0
    for path in (folder.events, folder.heartbeat):
        try:
            newest = max(newest, path.stat().st_mtime)
        except OSError:
            continue
    return newest or None


def age(run_dir, now: float | None = None) -> float:
    """Seconds since the run's last record or heartbeat (infinite when neither exists)."""
    last = last_sign(run_dir)
    if last is None:
        return float("inf")
    return max((time.time() if now is None else now) - last, 0.0)


class StallWatch:
    """A reader's view: says once when the trainer stalls and once when it is back."""

    def __init__(self, run_dir, since: float) -> None:
        self.run_dir = run_dir
        self.since = since  # signs older than this are an earlier job's
        self.stalled = False

    def check(self, now: float | None = None) -> str | None:
        """A line to show when the state changed, else None."""
        now = time.time() if now is None else now
        last = last_sign(self.run_dir)
        if last is None or last < self.since:
            return None  # not started yet
        quiet = now - last
        if not self.stalled and quiet > stall_after():
            self.stalled = True
            return f"stalled: no record or heartbeat from the trainer for {quiet:.0f} s (stopped or hung?)"
        if self.stalled and quiet <= stall_after():
            self.stalled = False
            return "the trainer is back (records or heartbeats again)"
        return None
