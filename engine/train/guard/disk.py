"""A full disk: under the checkpoints before or during a save, or under the run log; and an
output_dir that cannot be written (made read-only, its permissions taken away) the same way.

Before each save, free space on the output_dir's disk must be at least ``disk_margin`` times the
last checkpoint's size. When it is not, or a write fails for lack of space, the partial folder
is removed (older checkpoints and retention are not touched), an alert ``disk_full`` is raised
and the run pauses until there is room (or the operator resumes it to try again); headless (no
operator) it ends with exit 2. A run log that cannot be written (engine.run.events keeps its
records in memory) is handled the same way, by the same code, checked at every step end and
before every save (so no checkpoint is newer than the log).
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import UserError
from engine.run import checkpoints
from engine.train import dist

MB = 1 << 20


class Halt(Exception):
    """The operator stopped the run while it waited for disk space: nothing more is saved."""


def free_bytes(path: str | Path) -> int:
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def is_disk_full(exc: BaseException) -> bool:
    """A write that failed for lack of space, however the writer reported it."""
    seen = 0
    x: BaseException | None = exc
    while x is not None and seen < 8:
        if isinstance(x, OSError) and x.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(x)
        # safetensors (Rust) and torch's zip writer do not raise OSError
        if any(s in text for s in ("No space left", "os error 28", "Disk quota exceeded", "os error 122")):
            return True
        x = x.__cause__ or x.__context__
        seen += 1
    return False


def is_unwritable(exc: BaseException) -> bool:
    """A write refused by the folder (read-only file system, no permission), not for lack of space."""
    seen = 0
    x: BaseException | None = exc
    while x is not None and seen < 8:
        if isinstance(x, OSError) and x.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return True
        if any(
            s in str(x) for s in ("Read-only file system", "Permission denied", "os error 30", "os error 13")
        ):
            return True
        x = x.__cause__ or x.__context__
        seen += 1
    return False


def writable(folder: str | Path) -> bool:
    """Whether a file can be made in ``folder`` now (tried: root ignores permission bits)."""
    import tempfile

    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".leviathan-probe-")
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def _torch_write_failed(exc: BaseException) -> bool:
    # torch.save on a full disk: "[enforce fail at inline_container.cc] . unexpected pos N vs M"
    return isinstance(exc, RuntimeError) and ("unexpected pos" in str(exc) or "file write failed" in str(exc))


def _mb(n: float) -> str:
    return f"{n / MB:,.1f} MB"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


@dataclass(frozen=True)
class _Disk:
    """What the alert and the wait say about one disk that ran out of room."""

    fix: str  # what else an operator can do besides freeing space
    moved: str  # the config key that puts these writes on another disk
    room: str  # when training goes on by itself
    freed: str  # the `resumed` record's reason when it does
    where: dict = field(default_factory=dict)  # the alert's own fields
    todo: str = "free space on that disk"
    rule: str = "disk_full"  # the alert's rule and the pause's reason


CHECKPOINTS = _Disk("or move output_dir", "output_dir", "there is room", "disk space freed")
UNWRITABLE = _Disk(
    "or move output_dir",
    "output_dir",
    "it can be written again",
    "output_dir writable again",
    todo="make output_dir writable again (read-write mount, permissions)",
    rule="output_unwritable",
)
LOGS = _Disk(
    "or fix it",
    "logs_dir",
    "the log can be written again",
    "the run log can be written again",
    {"where": "logs"},
)


class DiskGuard:
    def __init__(self, guard) -> None:
        self.g = guard
        self.trainable_bytes = 0  # set by attach: sizes the first save

    def space_needed(self) -> int:
        last = checkpoints.latest(self.g.output_dir)
        size = last.size_bytes if last else 3 * self.trainable_bytes + MB  # weights + two Adam moments
        return int(size * self.g.c.disk_margin)

    def save_checkpoint(self, trainer, do_save) -> None:
        # A save whose step record could not be written would resume past a step the log lacks.
        self.check_log(trainer)
        out = self.g.output_dir
        step = trainer.state.global_step
        folder = Path(trainer.args.output_dir) / f"checkpoint-{step}"
        need = self.space_needed()
        self._clear_the_way(folder, step)
        force = False
        while True:
            free = free_bytes(out)
            if free < need and not force:
                force = self._wait_for_space(trainer, step, need, free, None)
                continue
            force = False
            try:
                if dist.is_main():
                    checkpoints.begin_save(folder)  # before the first file: a kill leaves it ours
                do_save()
                return
            except Exception as e:
                full = is_disk_full(e) or (_torch_write_failed(e) and free_bytes(out) < need)
                if not full and not is_unwritable(e):
                    raise
                error = _first_line(e)
            shutil.rmtree(folder, ignore_errors=True)
            if not full:
                force = self._wait_for_writable(trainer, step, error)
                continue
            free = free_bytes(out)
            need = max(need, free + max(need // 4, MB))  # it did not fit: wait for more than there is now
            force = self._wait_for_space(trainer, step, need, free, error)

    def _clear_the_way(self, folder: Path, step: int) -> None:
        """The folder this save writes into, if there is one already: ours is rewritten (flagged
        and unmarked first, so a kill meanwhile leaves a torn folder of ours, never a
        complete-looking mix); anyone else's is renamed beside it, never written over."""
        kind = checkpoints.kind_of(folder)
        if kind is None or not dist.is_main():
            return
        if kind == "complete":
            (folder / checkpoints.SAVING).touch()
            (folder / checkpoints.MARKER).unlink()
        elif kind == "foreign":
            dest = checkpoints.set_aside(folder, "set-aside")
            self.g.alert(
                "foreign_checkpoint",
                "warning",
                step,
                message=f"{folder} was not written by this engine ({checkpoints.why_foreign(dest)}): "
                f"renamed to {dest.name} so that this run's checkpoint-{step} does not overwrite it",
                advice="nothing to do; move it elsewhere when you no longer need it in output_dir",
            )

    def _wait_for_space(self, trainer, step: int, need: int, free: int, error: str | None) -> bool:
        """The checkpoint does not fit: held until it does (True: the operator asked to try anyway)."""
        out = self.g.output_dir
        what = (
            f"the save of checkpoint-{step} failed ({error}); the partial folder was removed"
            if error
            else f"checkpoint-{step} was not saved"
        )
        message = (
            f"{out}: disk full: {_mb(free)} free, about {_mb(need)} needed; {what}. "
            f"Older checkpoints are intact; nothing was deleted"
        )
        present = getattr(self.g.controls, "operator_present", True)
        return self._hold(
            trainer,
            CHECKPOINTS,
            step,
            message,
            present,
            lambda: free_bytes(out) >= need,
            free=free,
            need=need,
        )

    def _wait_for_writable(self, trainer, step: int, error: str) -> bool:
        """output_dir refuses writes: held until it takes them (True: the operator asked to try anyway)."""
        out = self.g.output_dir
        message = (
            f"{out}: cannot write there ({error}); checkpoint-{step} was not saved. "
            "Older checkpoints are intact; nothing was deleted"
        )
        present = getattr(self.g.controls, "operator_present", True)
        return self._hold(trainer, UNWRITABLE, step, message, present, lambda: writable(out))

    def check_log(self, trainer) -> None:
        """The run log could not be written (its disk is full, or another OSError): handled as
        a full checkpoint disk. Its records wait in memory meanwhile, so nothing is lost; the
        reserve beside the log makes room for the alert, the pause and the end record."""
        log, step = self.g.log, trainer.state.global_step
        if getattr(log, "error", None) is None or log.retry():
            return
        error = log.error
        log.release_reserve()
        message = (
            f"{log.path.parent}: the run log cannot be written ({_first_line(error)}); training holds "
            f"at step {step} with {len(log.pending)} record(s) kept in memory. Checkpoints are intact; "
            "nothing was deleted"
        )
        present = getattr(self.g.controls, "operator_present", True) and dist.world_size() == 1
        self._hold(trainer, LOGS, step, message, present, lambda: log.retry() and log.restore_reserve())

    def _hold(
        self, trainer, disk: _Disk, step: int, message: str, present: bool, ready, free=None, need=None
    ) -> bool:
        """Alert that ``disk`` is full, then pause until ``ready()`` (True: the operator resumed
        to try anyway). Headless, where nobody can free space while it waits: exit 2."""
        log = self.g.log
        last = checkpoints.latest(self.g.output_dir)
        since = f"checkpoint-{last.step}" if last else "the start (no checkpoint yet)"
        advice = (
            f"{disk.todo} ({disk.fix}); training goes on by itself when {disk.room} (resume: try now)"
            if present
            else f"{disk.todo} (or move {disk.moved}), then run the same command again: it resumes from {since}"
        )
        sizes = {} if need is None else {"free_mb": round(free / MB, 1), "need_mb": round(need / MB, 1)}
        log.emit(
            "alert",
            rule=disk.rule,
            level="critical",
            step=step,
            **disk.where,
            message=message,
            advice=advice,
            **sizes,
        )
        if not present:
            raise UserError(message, advice)
        forced = self._pause_until(trainer, step, since, ready, disk.rule)
        now = {} if need is None else {"free_mb": round(free_bytes(self.g.output_dir) / MB, 1)}
        log.emit("resumed", step=step, reason="operator" if forced else disk.freed, **now)
        return forced

    def _pause_until(self, trainer, step: int, since: str, ready, reason: str) -> bool:
        """Paused (chat still answered) until ``ready()`` (checked every disk_poll_s) or the
        operator resumes (True) or stops (Halt)."""
        c = self.g.controls
        poll = self.g.c.disk_poll_s
        self.g.log.emit("paused", step=step, reason=reason)
        c.request_pause()
        next_look = time.time() + poll
        while True:
            if self.g.commands is not None:
                self.g.commands.read_file()  # the operator's resume or stop (rank 0, no collective)
            if c.stop.is_set():
                self.g.log.emit(
                    "note",
                    step=step,
                    message=f"stopped while output_dir could not take the save: steps after {since} are not saved",
                )
                raise Halt
            if not c.pause.is_set():
                return True  # the operator resumed: try now
            if time.time() >= next_look:
                if ready():
                    c.request_resume()
                    return False
                next_look = time.time() + poll
            c.run_jobs(model=trainer.model, tokenizer=trainer.processing_class, step=step)
            time.sleep(0.05)
