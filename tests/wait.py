"""The tests' one wait: poll a condition until it holds, never a fixed sleep.

``wait_for(condition, timeout, what)`` returns the condition's first truthy value. With
``running=`` (a process, a ``LaunchedJob``) it fails at once, with the process's output, when the
process ends before the condition holds; with ``pilot=`` (a Textual pilot) it is awaited and
lets the app run between polls.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

POLL_S = 0.05


def wait_for(
    condition: Callable[[], Any],
    timeout: float = 10.0,
    what: str | None = None,
    *,
    running=None,
    pilot=None,
    every_s: float = POLL_S,
):
    """``condition()``'s first truthy value, polled every ``every_s`` for up to ``timeout`` s."""
    if pilot is not None:
        return _wait_in_app(pilot, condition, timeout, what, every_s)
    end = time.monotonic() + timeout
    while True:
        got = condition()
        if got:
            return got
        if running is not None and running.poll() is not None:
            got = condition()  # it may have written the awaited line just before it ended
            if got:
                return got
            raise AssertionError(
                f"{_name(what, condition)}: it ended first ({running.poll()}): {output_of(running)}"
            )
        if time.monotonic() > end:
            raise AssertionError(f"{_name(what, condition)}: not within {timeout} s")
        time.sleep(every_s)


async def _wait_in_app(pilot, condition, timeout, what, every_s):
    end = time.monotonic() + timeout
    while not (got := condition()):
        if time.monotonic() > end:
            raise AssertionError(f"{_name(what, condition)}: not within {timeout} s")
        await pilot.pause(every_s)
    return got


def record_in(log: Path, pred: Callable[[dict], Any]) -> Callable[[], dict | None]:
    """A condition: the first record of the run log ``log`` that ``pred`` accepts (None if none yet)."""
    from engine.run.events import read_events

    def first() -> dict | None:
        if not log.exists():
            return None
        return next((r for r in read_events(log).records if pred(r)), None)

    return first


def wait_record(log: Path, pred: Callable[[dict], Any], timeout: float = 180, running=None) -> dict:
    """The first record of ``log`` that ``pred`` accepts, once it is there."""
    return wait_for(record_in(log, pred), timeout, f"a record in {log}", running=running)


def exited(proc) -> Callable[[], bool]:
    """A condition: ``proc`` (anything with ``poll()``) has ended."""
    return lambda: proc.poll() is not None


def output_of(proc) -> str:
    """The end of what a process wrote, for a failure message: its ``output()``, a Popen's piped
    stderr, or a launched job's log file."""
    if hasattr(proc, "output"):
        return proc.output()[-3000:]
    stderr = getattr(proc, "stderr", None)
    if stderr is not None and hasattr(stderr, "read"):
        return stderr.read()[-3000:]
    log_path = getattr(proc, "log_path", None)
    return Path(log_path).read_text()[-3000:] if log_path else ""


def _name(what: str | None, condition) -> str:
    if what:
        return f"waiting for {what}"
    try:
        return f"waiting for {inspect.getsource(condition).strip()}"
    except (OSError, TypeError):
        return f"waiting for {condition!r}"
