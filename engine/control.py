"""Commands from the operator to the training loop, read at step boundaries.

The UI (or a signal handler) sets flags; the trainer callback reads them between optimizer
steps. Nothing here blocks the UI, and the training thread only blocks while paused.
"""

from __future__ import annotations

import threading


class Controls:
    def __init__(self) -> None:
        self.pause = threading.Event()
        self.stop = threading.Event()
        self.save_now = threading.Event()
        self.eval_now = threading.Event()
        self._resume = threading.Event()
        self.stop_reason = ""

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

    def wait_while_paused(self, timeout: float = 0.2) -> None:
        """Called by the training thread at a step boundary; returns when resumed or stopped."""
        while self.pause.is_set() and not self.stop.is_set():
            self._resume.wait(timeout)

    def take(self, flag: threading.Event) -> bool:
        if flag.is_set():
            flag.clear()
            return True
        return False
