"""Checkpoints: complete or invisible, listed with their metadata, kept by a policy.

A save begins by putting ``.leviathan-saving`` in its folder and ends by writing
``leviathan.json`` (after every other file is on disk, fsync, through a temporary name and a
rename; it records each file's size and SHA-256), then removing the flag. So a folder is:

- complete: ``leviathan.json`` reads;
- torn (ours): the flag is there and the marker does not read: a kill while this engine
  saved or removed it. Start-up moves it aside into ``.torn/`` (never deletes it) until the
  next complete save;
- foreign: neither, e.g. an HF Trainer or Axolotl checkpoint, or one of ours whose marker was
  damaged. It is left where it is and named, never resumed from and never written over.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

MARKER = "leviathan.json"
SAVING = ".leviathan-saving"
TORN_DIR = ".torn"
_NAME = re.compile(r"^checkpoint-(\d+)$")
_OURS = (MARKER, MARKER + ".tmp", SAVING)


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


def begin_save(folder: str | Path) -> None:
    """Flag ``folder`` as being written by this engine (before its first file). The flag is an
    empty file: creating it needs no data block, even on a disk that is all but full."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SAVING).touch()


def mark_complete(folder: str | Path, meta: dict) -> None:
    folder = Path(folder)
    _fsync_tree(folder)
    tmp = folder / (MARKER + ".tmp")
    files = {"files": file_digests(folder)}
    body = {**{k: v for k, v in meta.items() if k != "digest"}, **files, "completed_at": time.time()}
    with open(tmp, "w") as f:
        json.dump({**body, "digest": _marker_digest(body)}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / MARKER)
    (folder / SAVING).unlink(missing_ok=True)


def file_digests(folder: Path) -> dict[str, dict]:
    """``{relative path: {"size", "sha256"}}`` of every file of a checkpoint but our own markers.

    Read right after the write, from the page cache, one thread a file (hashlib releases the GIL):
    see benchmarks/checkpoint_checksum.py for what it costs at the guide's sizes.
    """
    files = [f for f in sorted(folder.rglob("*")) if f.is_file() and f.name not in _OURS]
    with ThreadPoolExecutor(max_workers=min(4, len(files) or 1)) as pool:
        digests = list(pool.map(sha256_of, files))
    return {
        str(f.relative_to(folder)): {"size": f.stat().st_size, "sha256": d}
        for f, d in zip(files, digests, strict=True)
    }


def sha256_of(path: Path, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def verify(ckpt: Checkpoint) -> list[str]:
    """What is wrong with a complete checkpoint's files (empty: all as saved, or not recorded)."""
    return verify_files(ckpt.path, ckpt.meta.get("files"))


def verify_files(folder: Path, recorded) -> list[str]:
    """What differs from ``recorded`` (``file_digests``' result) in ``folder``; nothing recorded: []."""
    if not isinstance(recorded, dict):
        return []  # saved before sizes and checksums were recorded
    problems = []
    for rel, want in recorded.items():
        f = Path(folder) / rel
        try:
            size = f.stat().st_size
        except OSError:
            problems.append(f"{rel} is missing")
            continue
        if size != want.get("size"):
            problems.append(f"{rel} is {size:,} bytes, {want.get('size'):,} when saved")
            continue
        if sha256_of(f) != want.get("sha256"):
            problems.append(f"{rel} has changed since it was saved (SHA-256 differs)")
    return problems


def _marker_digest(body: dict) -> str:
    """The marker's own checksum: a flipped bit that still parses (a step, a data hash) is damage."""
    import hashlib

    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def _read_marker(folder: Path) -> dict | None:
    try:
        meta = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict):
        return None
    if "digest" in meta and meta["digest"] != _marker_digest(
        {k: v for k, v in meta.items() if k != "digest"}
    ):
        return None  # markers written before the digest have none: read as they are
    return meta


def kind_of(folder: Path) -> str | None:
    """ "complete", "torn" (ours, unfinished), "foreign", or None where there is no folder."""
    if not folder.is_dir():
        return None
    if _read_marker(folder) is not None:
        return "complete"
    return "torn" if (folder / SAVING).exists() else "foreign"


@dataclass
class Layout:
    complete: list[Checkpoint] = field(default_factory=list)  # oldest first
    torn: list[Path] = field(default_factory=list)
    foreign: list[Path] = field(default_factory=list)


def classify(output_dir: str | Path) -> Layout:
    out = Path(output_dir)
    found = Layout()
    if not out.is_dir():
        return found
    for child in out.iterdir():
        m = _NAME.match(child.name)
        if not m or not child.is_dir():
            continue
        meta = _read_marker(child)
        if meta is not None:
            found.complete.append(Checkpoint(child, int(m.group(1)), meta))
        elif (child / SAVING).exists():
            found.torn.append(child)
        else:
            found.foreign.append(child)
    found.complete.sort(key=lambda c: c.step)
    found.torn.sort()
    found.foreign.sort()
    return found


def scan(output_dir: str | Path) -> tuple[list[Checkpoint], list[Path]]:
    """Complete checkpoints (oldest first) and torn folders of ours."""
    found = classify(output_dir)
    return found.complete, found.torn


def why_foreign(folder: Path) -> str:
    """What a folder that is not ours looks like, for the message that names it."""
    if (folder / MARKER).exists():
        return "its leviathan.json does not read (damaged); the files may be complete"
    if (folder / "trainer_state.json").exists():
        return "no leviathan.json: written by another trainer (HF Trainer / Axolotl)"
    return "no leviathan.json and not started by this engine"


def _free_name(path: Path) -> Path:
    if not path.exists():
        return path
    k = 1
    while path.with_name(f"{path.name}-{k}").exists():
        k += 1
    return path.with_name(f"{path.name}-{k}")


def set_aside_torn(output_dir: str | Path, torn: list[Path]) -> list[tuple[Path, Path]]:
    """Move torn folders of ours into ``output_dir/.torn/`` (until the next complete save)."""
    dest_dir = Path(output_dir) / TORN_DIR
    moved = []
    for t in torn:
        dest_dir.mkdir(exist_ok=True)
        dest = _free_name(dest_dir / t.name)
        os.replace(t, dest)
        moved.append((t, dest))
    return moved


def clear_torn(output_dir: str | Path) -> None:
    """After a complete save: the torn folders set aside are no longer needed."""
    shutil.rmtree(Path(output_dir) / TORN_DIR, ignore_errors=True)


def set_aside(folder: Path, why: str) -> Path:
    """Rename ``folder`` beside itself (``checkpoint-N.<why>``): kept, no longer a checkpoint."""
    dest = _free_name(folder.with_name(f"{folder.name}.{why}"))
    os.replace(folder, dest)
    return dest


def discard(folder: Path) -> None:
    """Delete a complete checkpoint of ours: flagged and unmarked first, so a kill during the
    delete leaves a torn folder of ours, never a half checkpoint or a foreign-looking one."""
    (folder / SAVING).touch()
    (folder / MARKER).unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)


def latest(output_dir: str | Path) -> Checkpoint | None:
    complete, _ = scan(output_dir)
    return complete[-1] if complete else None


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
            discard(c.path)
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
