"""Run-folder files opened without trusting the folder: no symlink followed, no file of another
user's, none that group or others may write.

A logs folder can be shared (a team's ``logs_dir``, ``/tmp``): another user could pre-create a
run folder whose ``events.jsonl`` is a symlink to a file only the trainer's user may write (which
the trainer would then append to), or a ``control.jsonl`` they can write (and pause or stop the
run with). Such a file is refused by name before anything is written or read through it.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from engine.errors import UserError


def open_run_file(path: str | Path, flags: int, mode: int = 0o644) -> int:
    """``os.open`` with ``O_NOFOLLOW``; the descriptor of a file this user owns and only this
    user may write, else UserError naming the file and the fix."""
    path = Path(path)
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UserError(
                f"{path}: a symlink where the run writes its own file (to {os.readlink(path)}); refused",
                f"remove {path} (or use a logs_dir only you can write)",
            ) from None
        raise
    try:
        _check(path, os.fstat(fd))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check(path: Path, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{path}: not a regular file; refused", f"remove {path}")
    if st.st_uid != os.geteuid():
        raise UserError(
            f"{path}: owned by another user (uid {st.st_uid}), not this one ({os.geteuid()}); refused: "
            "whoever owns it could read or steer this run",
            f"remove {path} (or use a logs_dir only you can write)",
        )
    if st.st_mode & 0o022:
        raise UserError(
            f"{path}: group or others may write it (mode {stat.S_IMODE(st.st_mode):o}); refused: "
            "they could forge this run's records or commands",
            f"chmod go-w {path}",
        )
