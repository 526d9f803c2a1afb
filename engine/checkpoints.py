"""Checkpoints: complete or invisible, listed with their metadata, kept by a policy.

A checkpoint folder counts only once ``leviathan.json`` is in it. That file is written
last, after every other file of the folder is on disk (fsync), through a temporary name
and a rename, so a kill at any moment leaves either a complete checkpoint or a folder
that resume ignores (and cleans away).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

MARKER = "leviathan.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class Checkpoint:
    path: Path
    step: int
    meta: dict

    @property
    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())


def _fsync_tree(folder: Path) -> None:
    for f in folder.rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def mark_complete(folder: str | Path, meta: dict) -> None:
    folder = Path(folder)
    _fsync_tree(folder)
    tmp = folder / (MARKER + ".tmp")
    with open(tmp, "w") as f:
        json.dump({**meta, "completed_at": time.time()}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / MARKER)


def scan(output_dir: str | Path) -> tuple[list[Checkpoint], list[Path]]:
    """Complete checkpoints (oldest first) and torn folders."""
    out = Path(output_dir)
    complete, torn = [], []
    if not out.is_dir():
        return complete, torn
    for child in out.iterdir():
        m = _NAME.match(child.name)
        if not m or not child.is_dir():
            continue
        marker = child / MARKER
        try:
            meta = json.loads(marker.read_text())
        except (OSError, ValueError):
            torn.append(child)
            continue
        complete.append(Checkpoint(child, int(m.group(1)), meta))
    complete.sort(key=lambda c: c.step)
    return complete, sorted(torn)


def latest(output_dir: str | Path) -> Checkpoint | None:
    complete, _ = scan(output_dir)
    return complete[-1] if complete else None


def remove_torn(output_dir: str | Path) -> list[Path]:
    _, torn = scan(output_dir)
    for t in torn:
        shutil.rmtree(t, ignore_errors=True)
    return torn


def best(complete: list[Checkpoint]) -> Checkpoint | None:
    """The checkpoint with the lowest finite ``eval_loss`` measured at its own step.

    A marker records the last evaluation before the save; only one taken at the checkpoint's
    own step (``eval_step == step``) describes its weights. Markers older than ``eval_step``
    count with the eval_loss they carry.
    """
    found = None
    for c in complete:
        loss = c.meta.get("eval_loss")
        if not isinstance(loss, (int, float)) or isinstance(loss, bool) or not math.isfinite(loss):
            continue
        if "eval_step" in c.meta and c.meta["eval_step"] != c.step:
            continue
        if found is None or loss < found.meta["eval_loss"]:
            found = c
    return found


def retain(output_dir: str | Path, limit: int | None, best_step: int | list[int] | None = None) -> list[Path]:
    """Delete the oldest complete checkpoints beyond ``limit``; the newest and the best survive.

    The best is read from the markers (so it survives restarts), plus ``best_step`` (one step or
    several: the best eval loss, the best probe score) when given.
    ``limit`` counts them all: with limit 3 and an old best, the best and the two newest stay
    (with limit 1 and a best that is not the newest, both stay).
    """
    if not limit:
        return []
    complete, _ = scan(output_dir)
    if not complete:
        return []
    keep = {complete[-1].step}
    top = best(complete)
    if top is not None:
        keep.add(top.step)
    for b in [best_step] if isinstance(best_step, int) else list(best_step or []):
        if any(c.step == b for c in complete):
            keep.add(b)
    for c in reversed(complete):  # fill the remaining places with the newest
        if len(keep) >= limit:
            break
        keep.add(c.step)
    removed = []
    for c in complete:
        if c.step not in keep:
            # Unmark first: a kill during the delete leaves a torn folder, never a half checkpoint.
            (c.path / MARKER).unlink(missing_ok=True)
            shutil.rmtree(c.path, ignore_errors=True)
            removed.append(c.path)
    return removed


def supersede(output_dir: str | Path) -> Path | None:
    """Move every checkpoint folder (complete or torn) into ``superseded-<time>/``; return it."""
    out = Path(output_dir)
    folders = [c for c in out.iterdir() if _NAME.match(c.name) and c.is_dir()] if out.is_dir() else []
    if not folders:
        return None
    dest = out / f"superseded-{int(time.time())}"
    dest.mkdir(exist_ok=True)
    for f in folders:
        os.replace(f, dest / f.name)
    return dest
