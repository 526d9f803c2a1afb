"""The data's fingerprint by content: size, mtime and a hash of the bytes preparation reads.

Preparation hashes every byte range it reads anyway (``engine.data.prepwork``); the hash of those
range digests, in order, is the file's content hash. A memo beside the prepared data maps a
file's (path, size, mtime, inode) to its content hash, so a later start finds the prepared data
without reading the file again, and an edit (new size or mtime) is seen at once. A checkpoint
records the hashes it was trained on; resuming on changed data is refused with what changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from engine.errors import UserError

MEMO = "fingerprints.json"


def stat_of(path: str) -> dict:
    if not os.path.isfile(path):  # a folder or hub id: its files together
        files = _listing(path)
        where = path if not os.path.exists(path) else str(Path(path).resolve())
        size = sum(f[1] for f in files)
        return {"path": where, "size": size, "mtime_ns": max((f[2] for f in files), default=0), "ino": 0}
    st = os.stat(path)
    return {
        "path": str(Path(path).resolve()),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ino": st.st_ino,
    }


def _listing(path: str) -> list[tuple[str, int, int]]:
    """(file, size, mtime) of each file a dataset path reads (engine.data.readers)."""
    from engine.data import readers

    if os.path.exists(path):
        files = readers.files_of(path)
    else:
        snapshot = readers.hub_snapshot(path) if readers.is_hub_id(path) else None
        files = readers.files_of(str(snapshot)) if snapshot is not None else []
    out = []
    for f in files:
        st = os.stat(f)
        out.append((str(Path(f).resolve()), st.st_size, st.st_mtime_ns))
    return out


def listing_hash(path: str) -> str:
    """The fingerprint of data that is not one plain JSONL file (parquet, arrow, .json, folders,
    hub ids): the size and mtime of each of its files, not their bytes, since these are read
    through engine.data.readers rather than hashed range by range; an edit still changes the mtime.
    A hub dataset held only in the datasets library's cache is named by its id alone."""
    return hashlib.sha256(json.dumps([path, _listing(path)]).encode()).hexdigest()


def combine(digests: list[bytes]) -> str:
    h = hashlib.sha256()
    for d in digests:
        h.update(d)
    return h.hexdigest()


def _read_memo(root: Path) -> dict:
    try:
        memo = json.loads((root / MEMO).read_text())
        return memo if isinstance(memo, dict) else {}
    except (OSError, ValueError):
        return {}


def known_hash(root: Path, path: str) -> str | None:
    """The content hash recorded for this file, if it has not changed since (size, mtime, inode)."""
    st = stat_of(path)
    entry = _read_memo(root).get(st["path"])
    if isinstance(entry, dict) and all(entry.get(k) == st[k] for k in ("size", "mtime_ns", "ino")):
        return entry.get("sha256")
    return None


def remember(root: Path, fingerprints: list[dict]) -> None:
    """Record each file's stat and content hash (written whole, then renamed)."""
    memo = _read_memo(root)
    for fp in fingerprints:
        memo[fp["path"]] = {k: fp[k] for k in ("size", "mtime_ns", "ino", "sha256")}
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{MEMO}.{os.getpid()}"
    try:
        tmp.write_text(json.dumps(memo, indent=1))
        os.replace(tmp, root / MEMO)
    except OSError:
        tmp.unlink(missing_ok=True)  # half a memo must not hold the space a later one needs
        raise


def for_checkpoint(fingerprints: list[dict]) -> list[dict]:
    """What a checkpoint keeps of the data it was trained on."""
    return [{"path": fp["path"], "size": fp["size"], "sha256": fp["sha256"]} for fp in fingerprints]


_FIX = (
    "restore the data file(s) the run was trained on, or start a new run on the new data: "
    "--resume never with a new output_dir (or --force to set the old checkpoints aside)"
)


def _changed(old: list[dict], new: list[dict], ckpt: str, compare_hash: bool) -> None:
    diffs = []
    if [o.get("path") for o in old] != [n["path"] for n in new]:
        diffs.append(
            "files: "
            + ", ".join(o.get("path", "?") for o in old)
            + " -> "
            + ", ".join(n["path"] for n in new)
        )
    else:
        for o, n in zip(old, new, strict=True):
            if o.get("size") != n["size"]:
                diffs.append(f"{n['path']}: size {o.get('size'):,} -> {n['size']:,} bytes")
            elif compare_hash and o.get("sha256") != n.get("sha256"):
                diffs.append(
                    f"{n['path']}: content changed (same size, sha256 {str(o.get('sha256'))[:12]}"
                    f" -> {str(n.get('sha256'))[:12]})"
                )
    if diffs:
        raise UserError(f"the data changed since {ckpt} was saved:\n  " + "\n  ".join(diffs), _FIX)


def check_sizes(old: list[dict] | None, paths: list[str], ckpt: str) -> None:
    """Before any work: refuse a resume whose data files have another size (cheap: a stat)."""
    if old:
        _changed(old, [stat_of(p) for p in paths], ckpt, compare_hash=False)


def check_content(old: list[dict] | None, new: list[dict], ckpt: str) -> None:
    """After preparation (or its cache): refuse a resume whose data has other content."""
    if old:
        _changed(old, new, ckpt, compare_hash=True)
