"""Commands from the operator to the training loop, read at step boundaries.

The UI (or a signal handler) sets flags; the trainer callback reads them between optimizer
steps. Nothing here blocks the UI, and the training thread only blocks while paused.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable


class Controls:
    def __init__(self) -> None:
        self.pause = threading.Event()
        self.stop = threading.Event()
        self.save_now = threading.Event()
        self.eval_now = threading.Event()
        self._resume = threading.Event()
        self.stop_reason = ""
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._jobs_lock = threading.Lock()
        self.jobs_closed = threading.Event()
        # Someone can free disk space and press resume (the cockpit). Headless sets False:
        # a full disk then ends the run (exit 2) instead of pausing it.
        self.operator_present = True

    def request_pause(self) -> None:
        self._resume.clear()
        self.pause.set()

    def request_resume(self) -> None:
        self.pause.clear()
        self._resume.set()

    def toggle_pause(self) -> bool:
        """Returns True when the run is now asked to pause."""
        if self.pause.is_set():
            self.request_resume()
            return False
        self.request_pause()
        return True

    def request_stop(self, reason: str = "operator") -> None:
        self.stop_reason = reason
        self.stop.set()
        self._resume.set()  # a paused run must wake up to stop

    def request_save(self) -> None:
        self.save_now.set()

    def request_eval(self) -> None:
        self.eval_now.set()

    def wait_for_wake(self, timeout: float) -> None:
        """The training thread's wait while paused: returns after ``timeout`` or sooner when
        woken (a resume, a stop, a submitted job)."""
        self._resume.wait(timeout)
        if self.pause.is_set() and not self.stop.is_set():
            self._resume.clear()  # woken for a job, not to resume

    def take(self, flag: threading.Event) -> bool:
        if flag.is_set():
            flag.clear()
            return True
        return False

    # -- jobs on the training thread (chat with the model in memory) -----------------------

    def submit(self, job: Callable[..., object]) -> bool:
        """Queue ``job(**context)`` for the training thread's next step boundary (at once while
        paused). Returns False when training has ended and nothing will ever run it."""
        with self._jobs_lock:
            if self.jobs_closed.is_set():
                return False
            self._jobs.put(job)
        self._resume.set()  # wakes a paused loop, which goes back to waiting
        return True

    def run_jobs(self, **context) -> int:
        """Run every queued job on this (the training) thread; returns how many ran.

        A job reports its own result and errors; one that raises anyway is dropped so
        that a chat can never take the run down.
        """
        n = 0
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return n
            n += 1
            with contextlib.suppress(Exception):  # the job already told its caller
                job(**context)

    def close_jobs(self, reason: str = "training has ended") -> None:
        """No more jobs: queued ones are cancelled with ``job.cancel(reason)`` when they have it."""
        with self._jobs_lock:
            self.jobs_closed.set()
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            cancel = getattr(job, "cancel", None)
            if cancel is not None:
                cancel(reason)
