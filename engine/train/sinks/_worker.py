"""What every tracker sink shares: a queue and a thread of its own, so that a tracker's library
(its network, its disk) never delays a step, and its failure becomes one ``alert`` record
instead of an exception in the trainer.

A tracker is opened on the run's ``start`` record (that is when a resume is known: the record's
step is the checkpoint's); records before it wait in order. Once it failed it is dropped for
the rest of the run, with one alert naming the tracker, the error and what to do.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import queue
import threading
from pathlib import Path

from engine.run.rundir import RunDir

_END = object()
_IDS_LOCK = threading.Lock()


def lacks_library(log, name: str, key: str, module: str) -> bool:
    """True (with an alert naming the extra to install) when ``module`` is not installed."""
    if importlib.util.find_spec(module) is not None:
        return False
    log.emit(
        "alert",
        rule=f"{name}_failed",
        level="warning",
        message=f"`{key}` is set but `{module}` is not installed: the run goes on without {name}",
        advice=f"pip install 'leviathan-cockpit[{name}]' (then resume: the tracker picks up from there)",
    )
    return True


class TrackerSink:
    """Subclasses implement ``open(start_record)``, ``handle(record)`` and ``finish()``, all called
    on this sink's thread."""

    name = "tracker"  # the alert's rule is f"{name}_failed"
    advice = "the run goes on without it; the run log has every record"

    def __init__(self, config, run_dir: Path, log, maxsize: int = 100_000) -> None:
        self.config, self.run_dir, self.log = config, Path(run_dir), log
        self.queue: queue.Queue = queue.Queue(maxsize)
        self.opened = False
        self.failed = False
        self.dropped = 0
        self.thread = threading.Thread(target=self._loop, name=f"sink-{self.name}", daemon=True)
        self.thread.start()

    # -- the trainer's side ---------------------------------------------------------------

    def __call__(self, record: dict) -> None:
        if self.failed:
            return
        try:
            self.queue.put_nowait(record)
        except queue.Full:  # the tracker fell far behind: drop, never wait
            self.dropped += 1

    def close(self, timeout: float = 60.0) -> None:
        with contextlib.suppress(queue.Full):
            self.queue.put(_END, timeout=1.0)
        self.thread.join(timeout)

    # -- this sink's thread ---------------------------------------------------------------

    def _loop(self) -> None:
        waiting: list[dict] = []
        while True:
            record = self.queue.get()
            if record is _END:
                break
            if self.failed:
                continue
            try:
                if not self.opened:
                    waiting.append(record)
                    if record.get("kind") != "start":
                        continue
                    self.open(record)
                    self.opened = True
                    record, rest = waiting.pop(), waiting
                    for r in rest:
                        self.handle(r)
                    waiting = []
                self.handle(record)
            except Exception as e:
                self._fail(e)
        if self.opened and not self.failed:
            try:
                self.finish()
            except Exception as e:
                self._fail(e)

    def _fail(self, e: Exception) -> None:
        self.failed = True
        with contextlib.suppress(Exception):
            self.finish()
        with contextlib.suppress(Exception):
            self.log.emit(
                "alert",
                rule=f"{self.name}_failed",
                level="warning",
                message=f"{self.name}: {type(e).__name__}: {str(e).strip()[:300]}",
                advice=self.advice,
            )

    def open(self, start: dict) -> None:
        raise NotImplementedError

    def handle(self, record: dict) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        pass

    # -- the run ids a resume continues (``trackers.json`` in the run folder) ----------------

    def saved_id(self, key: str) -> str | None:
        try:
            return json.loads(RunDir(self.run_dir).trackers.read_text()).get(key)
        except (OSError, ValueError, AttributeError):
            return None

    def save_id(self, key: str, value: str) -> None:
        path = RunDir(self.run_dir).trackers
        with _IDS_LOCK:
            try:
                ids = json.loads(path.read_text())
            except (OSError, ValueError):
                ids = {}
            ids[key] = value
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(ids, indent=1))
            os.replace(tmp, path)


def resuming(start: dict) -> bool:
    """A start from a checkpoint (its step is past 0): the tracker run goes on, not anew."""
    return isinstance(start.get("step"), int) and start["step"] > 0
