"""The append-only run log (``events.jsonl``) and its readers.

One JSON object a line, each with ``t`` (unix seconds) and ``kind``, and ``step`` where it
applies. Kinds: start, step, eval, save, gpu, alert, resume, phase, end (and a few more
named where they are emitted). The writer flushes every line so a reader in another
process (``attach``) sees it at once, and never glues its first record onto a line that a
kill cut short.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

Listener = Callable[[dict], None]


def _clean(value):
    # NaN and Inf are not JSON; the run log must still say a loss was not finite.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class RunLog:
    """Appends records to ``events.jsonl`` and hands each to the listeners.

    Listeners run on the emitting thread and must not block (put on a queue, post a
    message): the training thread never waits on a reader.
    """

    def __init__(self, path: str | Path, listeners: list[Listener] | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.listeners: list[Listener] = list(listeners or [])
        self._lock = threading.Lock()
        self._file = open(self.path, "a+b")  # noqa: SIM115 - lives as long as the run
        self._file.seek(0, os.SEEK_END)
        if self._file.tell() > 0:
            self._file.seek(-1, os.SEEK_END)
            if self._file.read(1) != b"\n":
                # A kill cut the last line short: end it so our first record stands alone.
                self._file.write(b"\n")
                self._file.flush()

    def emit(self, kind: str, **fields) -> dict:
        record = {"t": round(time.time(), 3), "kind": kind}
        record.update({k: _clean(v) for k, v in fields.items() if v is not None})
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        with self._lock:
            if not self._file.closed:
                self._file.write(line)
                self._file.flush()
        for listener in self.listeners:
            listener(record)
        return record

    def sync(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.flush()
                os.fsync(self._file.fileno())

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.flush()
                self._file.close()


@dataclass
class LogContents:
    records: list[dict] = field(default_factory=list)
    bad_lines: list[int] = field(default_factory=list)


def parse_line(line: bytes | str) -> dict | None:
    """A record, or None for a torn or foreign line."""
    try:
        record = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("kind"), str) or "t" not in record:
        return None
    return record


def read_events(path: str | Path) -> LogContents:
    out = LogContents()
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            record = parse_line(line)
            if record is None:
                out.bad_lines.append(lineno)
            else:
                out.records.append(record)
    return out


def dedupe_steps(records: list[dict]) -> list[dict]:
    """Step records, the last one of each step, in step order.

    After a resume the steps past the checkpoint are trained again; the newer record is
    the one on the continuing curve.
    """
    last: dict[int, dict] = {}
    for r in records:
        if r.get("kind") == "step" and isinstance(r.get("step"), int):
            last[r["step"]] = r
    return [last[s] for s in sorted(last)]


def follow(
    path: str | Path,
    stop: threading.Event,
    poll_s: float = 0.25,
    on_bad: Callable[[bytes], None] | None = None,
) -> Iterator[dict]:
    """Yield records as another process appends them, until ``stop`` is set.

    A partial last line is held back until its newline arrives. A torn or foreign line is
    skipped and handed to ``on_bad`` (the cockpit counts them).
    """
    pending = b""
    with open(path, "rb") as f:
        while not stop.is_set():
            chunk = f.readline()
            if not chunk:
                time.sleep(poll_s)
                continue
            pending += chunk
            if not pending.endswith(b"\n"):
                continue
            line, pending = pending, b""
            record = parse_line(line)
            if record is not None:
                yield record
            elif on_bad is not None and line.strip():
                on_bad(line)
