"""A seal beside an append-only log: how many bytes and lines were written, and their hash.

The writer updates ``.<log name>.seal`` after each append: one ``pwrite`` of a fixed-size line
and an xxh3 update over the bytes just written (engine.run.events' ``RunLog``, the chat
transcripts). A reader compares: a log shorter than its seal was truncated or deleted; one whose
sealed bytes hash differently was damaged (a zeroed block, changed bytes). Bytes past the seal
(another writer's, or a kill between the log's write and the seal's) are not judged, so a
crash never reads as damage. A log with no seal (written before seals) is read as it is.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import xxhash

from engine.run.safeopen import open_run_file

SIZE = 128  # the seal's fixed length: a rewrite never leaves a longer old tail behind
CHUNK = 1 << 20


def seal_path(log: str | Path) -> Path:
    log = Path(log)
    return log.with_name(f".{log.name}.seal")


@dataclass
class Damage:
    """What a reader found: ``good_lines`` lines are sound, ``missing`` records are gone."""

    message: str
    good_lines: int
    missing: int


def read_seal(log: str | Path) -> dict | None:
    try:
        seal = json.loads(seal_path(log).read_bytes())
    except (OSError, ValueError):
        return None
    ok = isinstance(seal, dict) and all(isinstance(seal.get(k), int) for k in ("bytes", "lines"))
    return seal if ok and isinstance(seal.get("xxh3"), str) else None


def _scan(path: Path, limit: int) -> tuple[str, int, int, list[int]]:
    """(hash of the first ``limit`` bytes, bytes, newlines in them, numbers of lines holding NULs)."""
    h, size, lines, bad = xxhash.xxh3_64(), 0, 0, []
    with open(path, "rb") as f:
        while size < limit:
            chunk = f.read(min(CHUNK, limit - size))
            if not chunk:
                break
            h.update(chunk)
            if b"\0" in chunk:  # a zeroed block; other changed bytes show only in the hash
                for i, part in enumerate(chunk.split(b"\n")):
                    if b"\0" in part and (not bad or bad[-1] != lines + i + 1):
                        bad.append(lines + i + 1)
            lines += chunk.count(b"\n")
            size += len(chunk)
    return h.hexdigest(), size, lines, bad


def check(log: str | Path, what: str = "log") -> Damage | None:
    """None when ``log`` holds every byte its seal covers, unchanged (or it has no seal)."""
    log = Path(log)
    seal = read_seal(log)
    if seal is None or seal["bytes"] == 0:
        return None
    if not log.is_file():
        n = seal["lines"]
        return Damage(f"{what} damaged: {log} was deleted: all {n} records it held are lost", 0, n)
    digest, size, lines, bad = _scan(log, seal["bytes"])
    if size < seal["bytes"]:
        n = seal["lines"] - lines
        return Damage(
            f"{what} damaged: {log} was cut short: records after line {lines} lost "
            f"({n} of {seal['lines']} missing)",
            lines,
            n,
        )
    if digest != seal["xxh3"]:
        where = f"lines {bad[0]}-{bad[-1]}" if bad else f"somewhere in its first {lines} lines"
        good = bad[0] - 1 if bad else 0
        lost = seal["lines"] - lines + len(bad)  # zeroed newlines joined records into one line
        return Damage(
            f"{what} damaged: {log}: bytes changed since they were written ({where}; a zeroed block "
            f"or a bad disk): {lost} record(s) there are lost, the rest are read",
            good,
            lost,
        )
    return None


class Sealer:
    """The writer's side: call ``after`` with where each append started and its bytes.

    The hash follows every append; the seal file is rewritten at most every ``interval_s``
    (and at ``close``): records newer than that are only not judged yet, never read as damage.
    """

    def __init__(self, log: str | Path, interval_s: float = 0.0) -> None:
        self.log = Path(log)
        self.path = seal_path(self.log)
        self.noticed: str | None = None  # the log shrank under the writer (truncated, deleted)
        self.interval_s = interval_s
        self._fd: int | None = None
        self._written = 0.0  # when the seal file was last rewritten (monotonic)
        self._dirty = False
        self._reset()

    def _reset(self) -> None:
        self._hash = xxhash.xxh3_64()
        self.offset = 0
        self.lines = 0

    def start(self, log_fd: int) -> None:
        """Seal what the log holds now (after the reader's ``check`` said what it found)."""
        with contextlib.suppress(OSError):
            self._fd = open_run_file(self.path, os.O_RDWR | os.O_CREAT)
        self._reset()
        self._catch_up(log_fd, os.fstat(log_fd).st_size)
        self._write()

    def _catch_up(self, log_fd: int, upto: int) -> None:
        while self.offset < upto:
            data = os.pread(log_fd, min(CHUNK, upto - self.offset), self.offset)
            if not data:
                break
            self._hash.update(data)
            self.offset += len(data)
            self.lines += data.count(b"\n")

    def after(self, log_fd: int, before: int, data: bytes) -> None:
        if before < self.offset:  # the log lost bytes the seal covered
            self.noticed = (
                f"{self.log} lost {self.offset - before} bytes ({self.lines} records were sealed) "
                "while this process wrote it: it was cut short, emptied or deleted"
            )
            self._reset()
        self._catch_up(log_fd, before)  # another writer's records, or the rebuilt start
        self._hash.update(data)
        self.offset = before + len(data)
        self.lines += data.count(b"\n")
        self._dirty = True
        if self.noticed or time.monotonic() - self._written >= self.interval_s:
            self._write()

    def _write(self) -> None:
        self._dirty = False
        self._written = time.monotonic()
        if self._fd is None:
            return
        line = json.dumps({"bytes": self.offset, "lines": self.lines, "xxh3": self._hash.hexdigest()})
        with contextlib.suppress(OSError):  # a seal that cannot be written only weakens the check
            os.pwrite(self._fd, line.encode().ljust(SIZE - 1) + b"\n", 0)

    def flush(self) -> None:
        if self._dirty:
            self._write()

    def close(self) -> None:
        self.flush()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
