"""Background jobs for the post-training steps (merge, quantize, push, ...), with progress.

The engine functions take a ``progress(fraction, message)`` callable. ``start`` runs one of
them in a daemon thread and keeps the newest progress on a ``Job`` the UI reads at its own
rate (or hears through ``on_update``, which runs on the job's thread and must not block:
post a message, put on a queue). A ``UserError`` ends the job as ``failed`` with its
message; anything else too, with the traceback kept for the log.

    job = jobs.start("merge", merge.merge, checkpoint, out)
    ...
    job.state, job.fraction, job.message, job.result, job.error
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.errors import UserError

Progress = Callable[[float, str], None]


def null_progress(fraction: float, message: str) -> None:
    """The progress sink when nobody listens."""


@dataclass
class Job:
    name: str
    state: str = "pending"  # pending | running | done | failed
    fraction: float = 0.0
    message: str = ""
    result: Any = None
    error: str | None = None
    user_error: bool = False
    traceback: str | None = None
    started: float | None = None
    ended: float | None = None
    on_update: Callable[[Job], None] | None = None
    _done: threading.Event = field(default_factory=threading.Event, repr=False)

    def progress(self, fraction: float, message: str) -> None:
        self.fraction = min(max(float(fraction), self.fraction), 1.0)
        self.message = message
        self._notify()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    @property
    def seconds(self) -> float:
        if self.started is None:
            return 0.0
        return (self.ended or time.time()) - self.started

    def _notify(self) -> None:
        if self.on_update is not None:
            self.on_update(self)

    def run(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
        self.state, self.started = "running", time.time()
        self._notify()
        try:
            self.result = fn(*args, progress=self.progress, **kwargs)
            self.state, self.fraction = "done", 1.0
        except UserError as e:
            self.state, self.error, self.user_error = "failed", str(e), True
        except BaseException as e:  # a job thread must report, not vanish
            self.state, self.error = "failed", f"{type(e).__name__}: {e}"
            self.traceback = traceback.format_exc()
        finally:
            self.ended = time.time()
            self._done.set()
            self._notify()


def start(
    name: str, fn: Callable[..., Any], *args, on_update: Callable[[Job], None] | None = None, **kwargs
) -> Job:
    """Run ``fn(*args, progress=..., **kwargs)`` in a daemon thread; returns its Job at once."""
    job = Job(name, on_update=on_update)
    thread = threading.Thread(target=job.run, args=(fn, args, kwargs), name=f"job-{name}", daemon=True)
    thread.start()
    return job
