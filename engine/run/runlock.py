"""One writer per run folder and per output_dir: a second trainer on either is refused;
readers are free.

Two runs with different names (the default name comes from the config file's name) would
otherwise train into one output_dir at once and overwrite each other's ``checkpoint-N``. The
locks are ``flock``s, so a killed holder never blocks the next start (a stale lock is free).
A ``flock`` belongs to the open file, which a forked child shares: the data preparation's
worker processes would keep a killed trainer's lock (and its run refused as "already being
trained" by a dead pid) for as long as they live. So a forked child closes its copy at once
(``os.register_at_fork``): the lock is held by the process that owns the run, and no other.

What a lock holds is this module's to write and to read: the run folder's ``.lock`` holds the
writer's pid, an output_dir's ``.leviathan-lock`` "pid run_dir". Readers (the start-up check,
the cockpit's "is the trainer alive") call ``lock_holder`` and ``lock_run``, never parse it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from engine.errors import UserError
from engine.run.rundir import OUTPUT_LOCK, RunDir

_held: set[int] = set()  # this process's lock descriptors


def _drop_in_child() -> None:
    for fd in _held:
        with contextlib.suppress(OSError):
            os.close(fd)  # the child's copy only: the parent's lock stays
    _held.clear()


os.register_at_fork(after_in_child=_drop_in_child)


class _Lock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def _take(self, content: str) -> str | None:
        """Lock and write ``content``; the holder's content when another process has it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            os.close(fd)
            return holder
        os.ftruncate(fd, 0)
        os.pwrite(fd, content.encode(), 0)
        self._fd = fd
        _held.add(fd)
        return None

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            # no pid left behind: preflight reads it, and a live process (a test, a notebook) that
            # finished its run in-process would still read as the holder
            _held.discard(self._fd)
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _parse(content: str) -> tuple[str, str]:
    """(pid, run folder) of what a lock holds; either may be empty."""
    pid, _, run = content.strip().partition(" ")
    return pid, run


class RunLock(_Lock):
    def __init__(self, run_dir: str | Path) -> None:
        super().__init__(RunDir(run_dir).lock)

    def __enter__(self) -> RunLock:
        holder = self._take(str(os.getpid()))
        if holder is not None:
            raise UserError(
                f"{self.path.parent}: this run is already being trained (pid {holder or 'another process'})",
                f"watch it with `leviathan-cockpit attach {self.path.parent}`, or stop that process first",
            )
        return self


class OutputLock(_Lock):
    """``output_dir/.leviathan-lock``, holding the pid and run folder of the run training into it."""

    def __init__(self, output_dir: str | Path, run_dir: str | Path) -> None:
        super().__init__(Path(output_dir) / OUTPUT_LOCK)
        self.run_dir = Path(run_dir).resolve()

    def __enter__(self) -> OutputLock:
        holder = self._take(f"{os.getpid()} {self.run_dir}")
        if holder is not None:
            pid, run = _parse(holder)
            run = run or "another run"
            raise UserError(
                f"{self.path.parent}: run {run} (pid {pid or '?'}) is already training into this output_dir; "
                "a second run there would overwrite its checkpoint-N folders",
                f"give this run its own output_dir, or watch that one with `leviathan-cockpit attach {run}`",
            )
        return self


def _held_pid(folder: Path) -> str:
    """The pid a folder's lock holds: a run folder's ``.lock`` first, else an output_dir's."""
    for path in (RunDir(folder).lock, Path(folder) / OUTPUT_LOCK):
        if path.is_file():
            pid, _ = _parse(path.read_text())
            if pid:
                return pid
    return ""


def lock_holder(folder: str | Path) -> int | None:
    """The pid of a live process named in the folder's lock (a run folder or an output_dir),
    else None.

    Reads the pid the holder wrote and never takes the lock, not even shared for an instant:
    a trainer starting at that moment would think its run is taken."""
    try:
        pid = int(_held_pid(Path(folder)) or 0)
    except (OSError, ValueError):
        return None
    if pid <= 0 or pid == os.getpid():
        return None
    return pid if pid_alive(pid) else None


def pid_alive(pid: int) -> bool:
    """Whether a process of that pid exists (someone else's counts: we may not signal it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_run(output_dir: str | Path) -> str | None:
    """The run folder named in an output_dir's lock, if any."""
    try:
        _, run = _parse((Path(output_dir) / OUTPUT_LOCK).read_text())
    except OSError:
        return None
    return run or None
