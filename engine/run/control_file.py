"""The control-file protocol: commands to a running trainer, one JSON line each in ``control.jsonl``.

Writers (the launcher, the cockpit, a user with ``echo``) append whole lines with one ``write``;
the trainer's rank 0 reads new complete lines at each step boundary and turns them into
``engine.run.control.Controls`` calls. Lines left from an earlier job are skipped unless the launcher
created the file fresh for this job (``CONTROL_FROM_START_ENV``).

    {"t": 1733000000.0, "command": "stop", "reason": "operator"}
    {"command": "chat", "base": "...", "request": {...}}   # engine.chat.chat_bridge, one process only

Standard library only: the cockpit writes commands without importing torch. Chat commands become
jobs through the ``chat_job`` the trainer passes in (``engine.chat.chat_bridge.job_from_command``), so
this layer does not import the chat code.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from engine.run.rundir import CONTROL as CONTROL_FILE
from engine.run.rundir import RunDir
from engine.run.safeopen import open_run_file

# Set by the launcher: the control file was created fresh for this job, read it from the start.
CONTROL_FROM_START_ENV = "LEVIATHAN_CONTROL_FROM_START"
COMMANDS = ("pause", "resume", "toggle_pause", "stop", "save", "eval", "chat")

__all__ = [
    "COMMANDS",
    "CONTROL_FILE",
    "CONTROL_FROM_START_ENV",
    "ControlFile",
    "append_command",
    "apply",
    "control_path",
]


def control_path(run_dir) -> Path:
    return RunDir(run_dir).control


def append_command(run_dir, command: str, **fields) -> dict:
    """Append one command to a run's control file (what the launcher and the cockpit call)."""
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r}; one of {', '.join(COMMANDS)}")
    record = {"t": round(time.time(), 3), "command": command, **fields}
    path = control_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record) + "\n").encode()
    fd = open_run_file(path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
    try:
        if _ends_unterminated(fd):
            line = b"\n" + line  # never glued onto a torn line or one left without its newline
        os.write(fd, line)  # one write: lines never interleave
    finally:
        os.close(fd)
    return record


def _ends_unterminated(fd: int) -> bool:
    size = os.fstat(fd).st_size
    return size > 0 and os.pread(fd, 1, size - 1) != b"\n"


class ControlFile:
    """Rank 0's reader of ``control.jsonl``: new complete lines become ``Controls`` calls.

    ``chat_job`` turns a chat command into a job for the training thread; without it (several
    processes: no rank holds the whole model) chat commands are refused.
    """

    def __init__(self, path, from_start: bool = False, chat_job: Callable | None = None) -> None:
        self.path = Path(path)
        self.offset = 0
        self.chat_job = chat_job
        if self.path.exists() or self.path.is_symlink():
            os.close(open_run_file(self.path, os.O_RDONLY))  # refused now, not at the first poll
        if not from_start and self.path.exists():
            self.offset = self.path.stat().st_size  # commands left from an earlier job are not ours
        self._pending = b""

    def poll(self, controls) -> list[dict]:
        try:
            with os.fdopen(open_run_file(self.path, os.O_RDONLY), "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self._pending + data
        lines = data.split(b"\n")
        # The last piece has no newline yet: a line still being written (one ``write`` each, so
        # rarely seen), or one whose writer never ends it (``printf``, a killed writer). Whole
        # commands in it are taken now; a fragment waits, and resynchronises at the next line.
        tail = lines.pop()
        cmds = [cmd for line in lines for cmd in commands_in(line)]
        taken, rest = _complete_prefix(tail)
        cmds += taken
        self._pending = rest
        return [cmd for cmd in cmds if apply(controls, cmd, self.chat_job)]


def commands_in(line: bytes) -> list[dict]:
    """The commands in one line: normally one JSON object; after a torn write or a line left
    without its newline, several glued together or a fragment before a whole one. Every whole
    object carrying a ``command`` is found, so no command is lost behind damage."""
    text = line.decode("utf-8", errors="replace")
    out: list[dict] = []
    pos = text.find("{")
    while pos != -1:
        try:
            obj, end = _DECODER.raw_decode(text, pos)
        except ValueError:
            pos = text.find("{", pos + 1)  # damage: try the next object start
            continue
        if isinstance(obj, dict) and "command" in obj:
            out.append(obj)
            pos = text.find("{", end)
        else:
            pos = text.find("{", pos + 1)  # not a command (a fragment's inner object): look inside
    return out


def _complete_prefix(tail: bytes) -> tuple[list[dict], bytes]:
    """Commands that are whole objects in an unterminated tail, and what must wait for more bytes."""
    text = tail.decode("utf-8", errors="replace").strip()
    if not text:
        return [], b""
    try:
        obj, end = _DECODER.raw_decode(text)
    except ValueError:
        return [], tail  # not whole yet (or damage: the next newline resynchronises)
    if isinstance(obj, dict) and "command" in obj and not text[end:].strip():
        return [obj], b""
    return [], tail


_DECODER = json.JSONDecoder()


def apply(controls, cmd: dict, chat_job: Callable | None = None) -> bool:
    """One command onto ``controls``; False for an unknown one (or chat without ``chat_job``)."""
    name = cmd.get("command")
    if name == "chat":
        # A question for the model in memory: one process only, where rank 0 holds the whole
        # model; answered on the training thread like any chat job.
        if chat_job is None:
            return False
        job = chat_job(cmd)
        if job is not None and not controls.submit(job):
            job.cancel("training has ended")
        return job is not None
    if name == "pause":
        controls.request_pause()
    elif name == "resume":
        controls.request_resume()
    elif name == "toggle_pause":
        controls.toggle_pause()
    elif name == "stop":
        controls.request_stop(str(cmd.get("reason") or "operator"))
    elif name == "save":
        controls.request_save()
    elif name == "eval":
        controls.request_eval()
    else:
        return False
    return True
