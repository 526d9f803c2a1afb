"""Chat with the model being trained in another process: the cockpit's trainer child.

The cockpit and its trainer share no interpreter (so the UI never takes the trainer's GIL).
A question travels as one line appended to the run's control file::

    {"command": "chat", "base": "...", "request": {"id": ..., "prompt": ..., "targets": [...], ...}}

The trainer's control reader (``engine.train.dist``) queues a ``ChatJob`` on its ``Controls``; the
training thread answers at its next step boundary (or at once while paused) on the model in
memory, exactly as in one process, and its sink appends each event (``Started``, ``Delta``,
``Done``, ``Failed``) as a JSON line to ``run_dir/chat/live/<id>.jsonl``. The cockpit follows
that file (``ProcessBackend``). An empty ``<id>.stop`` beside it asks the answer to stop.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import asdict
from pathlib import Path

from engine.chat.chat import Answer, Delta, Done, Failed, Request, Settings, Sink, Started
from engine.chat.chat_backend import ChatJob, TrainingBackend
from engine.run.rundir import RunDir

EVENTS = {cls.__name__: cls for cls in (Started, Delta, Done, Failed)}
FOLLOW_S = 0.05
ENDED_GRACE_S = 2.0
"""After the trainer has gone, how long a reply file may stay silent before the answer is given up."""


def reply_path(run_dir: str | Path, request_id: str) -> Path:
    if not request_id.isalnum():
        raise ValueError(f"bad chat request id {request_id!r}")  # it names a file
    return RunDir(run_dir).chat_live / f"{request_id}.jsonl"


def request_to_dict(r: Request) -> dict:
    return {
        "id": r.id,
        "prompt": r.prompt,
        "targets": list(r.targets),
        "settings": r.settings.as_dict(),
        "history": list(r.history),
        "preset": r.preset,
    }


def request_from_dict(d: dict) -> Request:
    return Request(
        prompt=str(d["prompt"]),
        targets=[str(t) for t in d["targets"]],
        settings=Settings(**d.get("settings") or {}),
        history=list(d.get("history") or []),
        preset=d.get("preset"),
        id=str(d["id"]),
    )


def event_to_dict(event) -> dict:
    return {"event": type(event).__name__, **asdict(event)}


def event_from_dict(d: dict):
    cls = EVENTS.get(d.get("event"))
    if cls is None:
        return None
    fields = {k: v for k, v in d.items() if k != "event"}
    if cls is Done:
        fields["answers"] = [Answer(**a) for a in fields.get("answers") or []]
    return cls(**fields)


# -- the trainer's side ----------------------------------------------------------------------


class FileSink:
    """The trainer's sink: one JSON line per event, flushed as it comes (the cockpit is reading)."""

    def __init__(self, path: Path, request: Request) -> None:
        self.path = path
        self.stop_file = path.with_suffix(".stop")
        self.request = request
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(path, "a")  # noqa: SIM115 - closed by the last event

    def __call__(self, event) -> None:
        if self._f.closed:
            return
        self._f.write(json.dumps(event_to_dict(event)) + "\n")
        self._f.flush()
        if isinstance(event, (Done, Failed)):
            self._f.close()
        elif self.stop_file.exists():
            self.request.stop.set()  # generation checks it between tokens


def job_from_command(run_dir: str | Path, cmd: dict) -> ChatJob | None:
    """The ``ChatJob`` for a ``chat`` command of the control file (None when it is malformed)."""
    try:
        request = request_from_dict(cmd["request"])
        path = reply_path(run_dir, request.id)
    except (KeyError, TypeError, ValueError):
        return None
    return ChatJob(request, FileSink(path, request), str(cmd.get("base") or ""))


# -- the cockpit's side ----------------------------------------------------------------------


class ProcessBackend(TrainingBackend):
    """Chat with the run a ``LaunchedJob`` trains (one process), on its model in memory.

    Args:
        job: the ``engine.cli.launcher.LaunchedJob`` (its ``control`` sends the question).
        base, output_dir, run_dir, chat_config: as ``TrainingBackend``.
        ended: says whether the run log has its ``end`` (the trainer answers no more).
    """

    def __init__(self, job, *, base: str, output_dir, run_dir, chat_config=None, ended=None) -> None:
        super().__init__(None, base=base, output_dir=output_dir, run_dir=run_dir, chat_config=chat_config)
        self.job = job
        self._ended = ended or (lambda: False)

    @property
    def live(self) -> bool:
        return self.job.poll() is None and not self._ended()

    def _send(self, request: Request, sink: Sink) -> bool:
        if not self.live:
            return False
        self.job.control("chat", base=self.base, request=request_to_dict(request))
        path = reply_path(self.run_dir, request.id)
        threading.Thread(
            target=self._follow, args=(path, request, sink), name="chat-follow", daemon=True
        ).start()
        return True

    def _follow(self, path: Path, request: Request, sink: Sink) -> None:
        offset, pending, silent_since, stop_sent = 0, b"", None, False
        while True:
            if request.stop.is_set() and not stop_sent:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.with_suffix(".stop").touch()
                stop_sent = True
            data = b""
            with contextlib.suppress(FileNotFoundError), open(path, "rb") as f:
                f.seek(offset)
                data = f.read()
            offset += len(data)
            lines = (pending + data).split(b"\n")
            pending = lines.pop()
            for line in lines:
                with contextlib.suppress(ValueError, TypeError):
                    event = event_from_dict(json.loads(line))
                    if event is None:
                        continue
                    sink(event)
                    if isinstance(event, (Done, Failed)):
                        return
            if data or self.live:
                silent_since = None
            elif silent_since is None:
                silent_since = time.monotonic()
            elif time.monotonic() - silent_since > ENDED_GRACE_S:
                sink(
                    Failed(
                        request.id,
                        "training ended before this question was answered",
                        "ask again: it now runs on a checkpoint",
                    )
                )
                return
            time.sleep(FOLLOW_S)
