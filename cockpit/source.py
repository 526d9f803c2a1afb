"""Where the cockpit's records come from: the cockpit's own training job (child processes,
``LaunchedSource``) or a run log on disk (``attach``). Tests drive the same two: a scripted
job (tests/cockpit_script.py) is a child process that writes a run log and reads the control
file, as ``engine.dist_main`` does.

Every source fills a queue from its own thread and the app drains it on a timer. Training
never waits on the UI: the trainer is another process that writes its run log and reads
its control file at step boundaries; the file follower here is the only one that may block
(on a full queue, while the UI catches up with a long log).
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path

from engine.run.control import Controls

DRAIN_LIMIT = 20_000
"""Records handled per drain tick: a million-line log replays in seconds, the UI stays live."""


class Source:
    """The base: a queue and how to drain it. Read-only unless it carries ``controls``."""

    job = None
    """The training job this cockpit started (engine.cli.launcher.LaunchedJob); None: read-only."""
    local_gpu = False
    """True when the GPU panel should sample this machine's GPUs (the run is in this process)."""
    live = True
    """False for a finished log: status shows as a replay, not a running job."""

    def __init__(self, *, run_name: str = "", run_dir: Path | None = None, config: dict | None = None):
        self.queue: queue.SimpleQueue | queue.Queue = queue.SimpleQueue()
        self.controls: Controls | None = None
        self.run_name = run_name
        self.run_dir = run_dir
        self.config = config or {}
        self.bad_lines = 0

    @property
    def read_only(self) -> bool:
        return self.controls is None

    def start(self) -> None:
        """Begin producing (the app calls this once it is mounted)."""

    def stop(self) -> None:
        """Stop producing (the app calls this when it closes)."""

    def writer_alive(self) -> bool | None:
        """Whether the process writing this log still runs; None when it is not ours to ask."""
        return None

    def heartbeat_age(self) -> float | None:
        """Seconds since the trainer's last record or heartbeat (engine.run.heartbeat); None: unknown."""
        if self.run_dir is None:
            return None
        from engine.run.heartbeat import age

        return age(self.run_dir)

    def drain(self, limit: int = DRAIN_LIMIT) -> list[dict]:
        out: list[dict] = []
        get = self.queue.get_nowait
        try:
            while len(out) < limit:
                out.append(get())
        except queue.Empty:
            pass
        return out


class FileSource(Source):
    """A run log on disk, followed live (``attach``): torn or foreign lines are skipped and counted."""

    def __init__(self, path: Path, *, poll_s: float = 0.25, **kw) -> None:
        super().__init__(**kw)
        self.path = Path(path)
        self.poll_s = poll_s
        self.queue = queue.Queue(maxsize=4 * DRAIN_LIMIT)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._read_all = threading.Event()  # the follower reached the end of the file once

    @property
    def loading(self) -> bool:
        """Still replaying what the log held when attached (a long finished run: seconds)."""
        return not self._read_all.is_set() or not self.queue.empty()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._follow, name="follow-run-log", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def writer_alive(self) -> bool | None:
        return run_is_live(self.path.parent)

    def heartbeat_age(self) -> float | None:
        from engine.run.heartbeat import age

        return age(self.path.parent)

    def _bad(self, line: bytes) -> None:
        self.bad_lines += 1

    def _follow(self) -> None:
        from engine.run.events import follow

        said = damage_alert(self.path)
        if said is not None:  # before the records: what follows was read from what was left
            self.queue.put(said)
        for record in follow(self.path, self._stop, self.poll_s, on_bad=self._bad, at_end=self._read_all.set):
            while not self._stop.is_set():
                try:
                    self.queue.put(record, timeout=0.2)
                    break
                except queue.Full:
                    continue


def damage_alert(path: Path) -> dict | None:
    """An alert record when the log's seal (engine.run.seal) says records were lost since it was
    written and no writer has said so yet (a trainer opening it logs the same alert itself)."""
    import time

    from engine.run.events import DAMAGED, DAMAGED_ADVICE
    from engine.run.seal import check

    damage = check(path, "run log")
    if damage is None:
        return None
    return {
        "t": round(time.time(), 3),
        "kind": "alert",
        "rule": DAMAGED,
        "level": "warning",
        "message": damage.message,
        "advice": DAMAGED_ADVICE,
    }


def run_is_live(run_dir: Path) -> bool:
    """Whether the trainer that holds this run's lock (engine.run.runlock) is still running."""
    from engine.run.runlock import lock_holder

    return lock_holder(run_dir) is not None


class JobControls(Controls):
    """The cockpit's keys for its job: each command appended to the run's control file, which the
    trainer (every rank, at the same step) acts on. Where the run stands is the app's ``RunState``,
    from the trainer's records; only ``stop`` is kept here too, the mailbox of a signal handler
    (cockpit.launch) that the app reads on its next tick.
    """

    def __init__(self, job) -> None:
        super().__init__()
        self.job = job

    def request_pause(self) -> None:
        self.job.control("pause")

    def request_resume(self) -> None:
        self.job.control("resume")

    def request_stop(self, reason: str = "operator") -> None:
        super().request_stop(reason)
        self.job.control("stop", reason=reason)

    def request_save(self) -> None:
        self.job.control("save")

    def request_eval(self) -> None:
        self.job.control("eval")


class LaunchedSource(FileSource):
    """The cockpit's own training job in child processes (engine.cli.launcher): its rank 0's run
    log, followed, and controls that reach every rank."""

    local_gpu = True  # the job runs on this machine: sample its GPUs here, fresher than the log

    def __init__(self, job, *, poll_s: float = 0.1, **kw) -> None:
        super().__init__(job.events, run_dir=job.run_dir, poll_s=poll_s, **kw)
        self.job = job
        self.controls = JobControls(job)
        self.can_eval = bool(self.config.get("val_set_size"))

    def writer_alive(self) -> bool | None:
        return self.job.poll() is None

    def _follow(self) -> None:
        # Rank 0 opens the run log once the processes are up; wait for it (or for a failed start).
        while not self.path.exists() and not self._stop.is_set():
            if self.job.poll() is not None and not self.path.exists():
                return
            self._stop.wait(self.poll_s)
        super()._follow()
