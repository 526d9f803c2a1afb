"""The append-only run log (``events.jsonl``) and its readers.

One JSON object a line, each with ``t`` (unix seconds) and ``kind``, and ``step`` where it
applies. Kinds: start, step, eval, save, gpu, alert, resume, phase, end (and a few more
named where they are emitted). Each line is written at once (no buffer) so a reader in another
process (``attach``) sees it at once; the writer never glues a record onto a line that a kill
or another writer cut short.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from engine import faults
from engine.run import records as declared
from engine.run.safeopen import open_run_file
from engine.run.seal import Damage, Sealer, check

Listener = Callable[[dict], None]


def _clean(value):
    # NaN and Inf are not JSON; the run log must still say a loss was not finite.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


SEAL_INTERVAL_S = 0.25  # the seal's rewrite, at most this often: off the step's path (benchmarks/log_seal.py)
DAMAGED = "run_log_damaged"
DAMAGED_ADVICE = (
    "the lost records cannot be read back from the log; each checkpoint's trainer_state.json "
    "(log_history) still holds the step losses up to that save"
)
RESERVE = ".events-reserve"
RESERVE_BYTES = 64 << 10


class RunLog:
    """Appends records to ``events.jsonl`` and hands each to the listeners.

    Listeners run on the emitting thread and must not block (put on a queue, post a
    message): the training thread never waits on a reader.

    Each record is one ``write`` on an ``O_APPEND`` descriptor, so a line is never interleaved.
    Before a write the writer checks that the file still ends where its own last record ended:
    if another writer left a half line, the record starts on a fresh line; if ``events.jsonl``
    was deleted or replaced, it is opened (created) again. A write that fails (a full disk,
    ``OSError``) is cut back to where it started, so no torn line stays, and its record is held
    in memory with every later one until a write succeeds: ``error`` says why meanwhile
    (engine.train.guard pauses or ends the run on it). ``.events-reserve`` beside the log is 64 KiB
    kept free for that moment: released, it leaves room for the alert, the pause and the end.
    """

    def __init__(self, path: str | Path, listeners: list[Listener] | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.listeners: list[Listener] = list(listeners or [])
        self.error: OSError | None = None
        self.pending: list[bytes] = []
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._end = -1  # where our last write ended (-1: not known)
        damage = check(self.path, "run log")  # before a word is added: what the last writer left
        self._open()
        self._sealer = Sealer(self.path, SEAL_INTERVAL_S)
        self._sealer.start(self._fd)
        self.reserve = self.path.with_name(RESERVE)
        self.restore_reserve()
        if damage is not None:
            self._damaged(damage.message)

    def _open(self) -> None:
        self._fd = open_run_file(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
        st = os.fstat(self._fd)
        self._ident = (st.st_dev, st.st_ino)
        self._end = -1

    def _moved(self) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return True
        return (st.st_dev, st.st_ino) != self._ident

    def _starts_mid_line(self) -> bool:
        size = os.fstat(self._fd).st_size
        if size == 0 or size == self._end:
            return False
        return os.pread(self._fd, 1, size - 1) != b"\n"

    def _append(self, data: bytes, step=None) -> None:
        before = os.fstat(self._fd).st_size
        try:
            if faults.log_write_fails(step):
                os.write(self._fd, data[: len(data) // 2])
                raise OSError(
                    errno.ENOSPC, f"No space left on device (injected by {faults.ENV})", str(self.path)
                )
            done = 0
            while done < len(data):
                done += os.write(self._fd, data[done:])
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, before)  # no half record left behind
            raise
        self._end = before + len(data)
        self._sealer.after(self._fd, before, data)

    def _drain(self, step=None) -> None:
        if self._fd is None or not self.pending:
            return
        try:
            if self._moved():  # deleted or replaced under us: a new file, as at the start
                os.close(self._fd)
                self._open()
            data = b"".join(self.pending)
            self._append(b"\n" + data if self._starts_mid_line() else data, step)
        except OSError as e:
            self.error = e
            return
        self.pending.clear()
        self.error = None

    def emit(self, kind: str, **fields) -> dict:
        """Write one record (declared in engine.run.records) and hand the same dict to the listeners."""
        record = {"t": round(time.time(), 3), "kind": kind}
        record.update({k: _clean(v) for k, v in fields.items() if v is not None})
        declared.check(record)  # strict mode (tests): an undeclared kind or field raises here
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        with self._lock:
            if self._fd is not None:
                self.pending.append(line)
                self._drain(record.get("step"))
        for listener in self.listeners:
            listener(record)
        if self._sealer.noticed:
            message, self._sealer.noticed = self._sealer.noticed, None
            self._damaged("run log damaged: " + message)
        return record

    def _damaged(self, message: str) -> None:
        # Said in the log itself, so every later reader (attach, checklist, the card) sees it
        # after the seal is renewed over what is left.
        self.emit("alert", rule=DAMAGED, level="warning", message=message, advice=DAMAGED_ADVICE)

    def retry(self) -> bool:
        """Write what is held back; True when nothing is (any more)."""
        with self._lock:
            self._drain()
            return not self.pending

    def release_reserve(self) -> None:
        with contextlib.suppress(OSError):
            self.reserve.unlink()

    def restore_reserve(self) -> bool:
        """Put the reserve back (best effort); True when it is there, whole."""
        try:
            if self.reserve.is_file() and self.reserve.stat().st_size == RESERVE_BYTES:
                return True
            with open(self.reserve, "wb") as f:
                f.write(b"\0" * RESERVE_BYTES)
                f.flush()
                os.fsync(f.fileno())  # tmpfs/ext4 allocate at write; fsync makes quota errors show here
            return True
        except OSError:
            self.release_reserve()
            return False

    def sync(self) -> None:
        with self._lock:
            if self._fd is not None:
                self._sealer.flush()
                with contextlib.suppress(OSError):
                    os.fsync(self._fd)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                self._drain()
                os.close(self._fd)
                self._fd = None
                self._sealer.close()


@dataclass
class LogContents:
    records: list[dict] = field(default_factory=list)
    bad_lines: list[int] = field(default_factory=list)
    damage: Damage | None = None  # what the seal says was lost since it was written


def damage_said(contents: LogContents) -> list[str]:
    """Every loss of this log: found now by its seal, or found by a writer and logged."""
    said = [r.get("message", "") for r in contents.records if r.get("rule") == DAMAGED]
    return ([contents.damage.message] if contents.damage else []) + said


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
    out = LogContents(damage=check(path, "run log"))
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
    at_end: Callable[[], None] | None = None,
) -> Iterator[dict]:
    """Yield records as another process appends them, until ``stop`` is set.

    A partial last line is held back until its newline arrives. A torn or foreign line is
    skipped and handed to ``on_bad`` (the cockpit counts them). ``at_end`` is called each time
    the reader has caught up with the file (the cockpit says "loading" until the first time).
    """
    pending = b""
    with open(path, "rb") as f:
        while not stop.is_set():
            chunk = f.readline()
            if not chunk:
                if at_end is not None:
                    at_end()
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
