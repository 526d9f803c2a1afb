"""Chat transcripts: ``logs/<run>/chat/<session>.jsonl``, append-only.

One ``exchange`` record per answer (a compare writes two, sharing ``request``):

    {"kind": "exchange", "id": "...", "request": "...", "t": ..., "checkpoint": "...",
     "checkpoint_step": 60, "at_step": 42, "base": "...", "settings": {...},
     "history": [...], "prompt": "...", "answer": "...", "reason": "eos",
     "tokens": 12, "first_token_s": 0.05, "tokens_per_s": 80.0, "preset": "Who are you?",
     "group": "identity", "compare": ["...", "..."]}

The operator's verdict comes later as its own record, never by rewriting a line:

    {"kind": "mark", "id": "<exchange id>", "t": ..., "mark": "pass" | "fail"}

The last mark of an exchange wins. ``read_exchanges`` and ``mark_summary`` are what the
checklist reads.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path

from engine.run.rundir import RunDir
from engine.run.seal import Sealer, check

MARKS = ("pass", "fail")


def chat_dir(run_dir: str | Path) -> Path:
    return RunDir(run_dir).chat


def checkpoint_step(target: str) -> int | None:
    m = re.search(r"checkpoint-(\d+)/?$", str(target))
    return int(m.group(1)) if m else None


class Transcript:
    """One chat session's file; created on the first record."""

    def __init__(self, run_dir: str | Path, base: str | None = None) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.path = chat_dir(run_dir) / f"{stamp}-{os.getpid()}.jsonl"
        self.base = base
        self._lock = threading.Lock()
        self._sealer: Sealer | None = None  # engine.run.seal: a reader can tell records lost

    def _append(self, record: dict) -> None:
        data = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                if self._sealer is None:
                    self._sealer = Sealer(self.path)
                    self._sealer.start(fd)
                before = os.fstat(fd).st_size
                os.write(fd, data)
                self._sealer.after(fd, before, data)
            finally:
                os.close(fd)

    def exchange(self, request, done, preset=None) -> list[str]:
        """Write one record per answer of a finished request; returns their ids."""
        ids = [f"{request.id}-{i}" for i in range(len(done.answers))]
        for i, answer in enumerate(done.answers):
            self._append(
                {
                    "kind": "exchange",
                    "id": ids[i],
                    "request": request.id,
                    "t": round(time.time(), 3),
                    "checkpoint": answer.target,
                    "checkpoint_step": checkpoint_step(answer.target),
                    "at_step": done.step,
                    "base": self.base,
                    "settings": request.settings.as_dict(),
                    "history": request.history if len(done.answers) == 1 else [],
                    "prompt": request.prompt,
                    "answer": answer.text,
                    "reason": answer.reason,
                    "tokens": answer.tokens,
                    "first_token_s": answer.first_token_s,
                    "tokens_per_s": answer.tokens_per_s,
                    "preset": preset.label if preset else None,
                    "group": preset.group if preset else None,
                    "compare": [a.target for a in done.answers] if len(done.answers) > 1 else None,
                }
            )
        return ids

    def mark(self, exchange_id: str, mark: str) -> None:
        if mark not in MARKS:
            raise ValueError(f"mark must be one of {MARKS}, not {mark!r}")
        self._append({"kind": "mark", "id": exchange_id, "t": round(time.time(), 3), "mark": mark})


def read_exchanges(run_dir: str | Path) -> list[dict]:
    """Every exchange of every session of a run, oldest first, with its last ``mark`` (or None)."""
    exchanges: dict[str, dict] = {}
    marks: dict[str, str] = {}
    folder = chat_dir(run_dir)
    for file in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        with open(file, encoding="utf-8") as f:
            for line in f:
                try:
                    r = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a kill
                if not isinstance(r, dict):
                    continue
                if r.get("kind") == "exchange" and "id" in r:
                    exchanges[r["id"]] = {**r, "file": file.name}
                elif r.get("kind") == "mark" and r.get("mark") in MARKS:
                    marks[r.get("id")] = r["mark"]
    out = sorted(exchanges.values(), key=lambda r: r.get("t", 0))
    for r in out:
        r["mark"] = marks.get(r["id"])
    return out


def chat_damage(run_dir: str | Path) -> list[str]:
    """What the seals of the run's transcripts say was lost (a file cut short, zeroed, deleted)."""
    folder = chat_dir(run_dir)
    seals = sorted(folder.glob(".*.jsonl.seal")) if folder.is_dir() else []
    found = (check(folder / s.name[1 : -len(".seal")], "chat transcript") for s in seals)
    return [d.message for d in found if d is not None]


def mark_summary(run_dir: str | Path) -> dict:
    """Pass/fail counts over marked exchanges, in all and by preset group (``None``: free text)."""
    total = {"pass": 0, "fail": 0, "unmarked": 0}
    groups: dict[str, dict] = {}
    for r in read_exchanges(run_dir):
        key = r["mark"] or "unmarked"
        total[key] += 1
        g = groups.setdefault(r.get("group") or "free", {"pass": 0, "fail": 0, "unmarked": 0})
        g[key] += 1
    return {**total, "by_group": groups}
