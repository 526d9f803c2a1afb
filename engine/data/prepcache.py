"""The prepared-data cache: one folder per (data content, tokenizer, template, options, code).

``dataset_prepared_path`` (Axolotl's key; default ``<output_dir>/prepared-data``) holds:

- ``<key>/``: a complete prepared data set: ``rows.arrow`` (every kept row: int32 ``input_ids``,
  int8 ``mask``, ``category``; memory-mapped when read), the packing/split index
  (``train_order.npy``, ``train_bounds.npy``, ``val_*``) and ``meta.json`` (stats, counts, the
  data's fingerprint). ``<key>`` hashes everything the bytes depend on.
- ``.tmp-<pid>-<n>/``: a preparation under way. It becomes ``<key>/`` by one rename once every
  file is written, so a folder named by a key is always complete and an interrupted
  preparation is never read; leftovers of dead processes are removed.
- ``fingerprints.json``: the content-hash memo (``engine.data.datafp``).

When a new folder is committed, the older ones made for the same data files and output are
removed (they are stale: some input changed).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

from engine.data.data import Stats
from engine.errors import UserError
from engine.run.runlock import pid_alive

VERSION = 3  # 2: notes in the stats, every dataset key in the cache key; 3: checksums
CODE_FILES = (  # what the bytes depend on
    "data.py",
    "prepwork.py",
    "packview.py",
    "prepare.py",
    "masks.py",
    "mask_locate.py",
    "prompt_formats.py",
    "readers.py",
    "prepcheck.py",
)


def root_for(config) -> Path:
    path = getattr(config, "dataset_prepared_path", None)
    return Path(path) if path else Path(config.output_dir) / "prepared-data"


def tokenizer_identity(tokenizer) -> str:
    """Hash of everything of the tokenizer that changes ids or masks: its model, template, specials."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)  # a slow one is refused by the encoder
    h.update(backend.to_str().encode() if backend is not None else repr(tokenizer).encode())
    h.update(str(tokenizer.chat_template).encode())
    h.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    h.update(type(tokenizer).__name__.encode())
    return h.hexdigest()


def code_identity() -> str:
    here = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for name in CODE_FILES:
        h.update((here / name).read_bytes())
    return h.hexdigest()


def key_inputs(config, tokenizer_id: str, hashes: list[str]) -> dict:
    return {
        "version": VERSION,
        # every dataset key: the parse options (type, field_messages, message_property_mappings,
        # roles, drop_system_message, split, ...) and the mask options (roles_to_train,
        # train_on_eos, message_field_training) all change what is prepared
        "data": [{**_spec_keys(s), "sha256": h} for s, h in zip(config.datasets, hashes, strict=True)],
        "tokenizer": tokenizer_id,
        "code": code_identity(),
        "train_on_inputs": config.train_on_inputs,
        "sequence_len": config.sequence_len,
        "too_long": config.too_long,
        "sample_packing": config.sample_packing,
        "val_set_size": config.val_set_size,
        "seed": config.seed,
    }


def _spec_keys(spec) -> dict:
    if hasattr(spec, "model_dump"):
        return spec.model_dump(mode="json")
    return {"path": spec.path, "type": spec.type, "field_messages": spec.field_messages}


def key_of(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:24]


def slot_of(config) -> str:
    """The data files and output a cache serves: a newer cache for the same slot makes it stale."""
    ident = [str(Path(s.path).resolve()) for s in config.datasets] + [str(Path(config.output_dir).resolve())]
    return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:16]


def load_meta(folder: Path) -> dict | None:
    """``meta.json`` when it reads, is of this version and holds the digest it was written with
    (a flipped bit that still parses as JSON is damage too); else None."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("version") != VERSION:
        return None
    return meta if meta.get("digest") == meta_digest(meta) else None


def meta_digest(meta: dict) -> str:
    body = {k: v for k, v in meta.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def new_tmp(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for n in range(1000):
        tmp = root / f".tmp-{os.getpid()}-{n}"
        try:
            tmp.mkdir()
            return tmp
        except FileExistsError:
            continue
    raise RuntimeError(f"{root}: cannot make a temporary folder")


def commit(tmp: Path, root: Path, key: str, slot: str) -> Path:
    """Rename ``tmp`` to ``root/key`` (an existing complete one wins), then remove stale caches."""
    final = root / key
    try:
        os.rename(tmp, final)
    except OSError:  # another process committed the same key first: same bytes, keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    remove_stale(root, keep=key, slot=slot)
    return final


def remove_stale(root: Path, keep: str | None = None, slot: str | None = None) -> list[str]:
    removed = []
    if not root.is_dir():
        return removed
    for d in root.iterdir():
        if not d.is_dir() or d.name == keep:
            continue
        if d.name.startswith(".tmp-"):
            try:
                pid = int(d.name.split("-")[1])
            except (IndexError, ValueError):
                continue
            if pid == os.getpid() or pid_alive(pid):
                continue
        else:
            meta = load_meta(d)
            if meta is not None and (slot is None or meta.get("slot") != slot):
                continue  # another run's, or another data set's: not ours to judge
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d.name)
    return removed


def known_hash(root: Path, path: str) -> str | None:
    """A data file's content hash from a committed preparation's ``meta.json`` when the file has
    not changed since (size, mtime, inode): the fingerprint memo's fallback, so a memo that could
    not be written (a full disk) or was lost never makes a complete cache unusable."""
    from engine.data.datafp import stat_of

    st = stat_of(path)
    for d in root.iterdir() if root.is_dir() else ():
        meta = load_meta(d) if not d.name.startswith(".") else None
        for fp in (meta or {}).get("data", []):
            if isinstance(fp, dict) and all(fp.get(k) == st[k] for k in ("path", "size", "mtime_ns", "ino")):
                return fp.get("sha256")
    return None


def discard(folder: Path) -> None:
    """Remove a damaged preparation (it is rebuilt from the data files)."""
    try:
        shutil.rmtree(folder)
    except OSError as e:
        raise UserError(
            f"{folder}: damaged prepared data that cannot be removed ({e.strerror or e})",
            "remove that folder by hand; the next start prepares the data again",
        ) from None


def size_of_folder(folder: Path) -> int:
    try:
        return sum(f.stat().st_size for f in folder.iterdir())
    except OSError:
        return 0


def disk_full(e: OSError, root: Path, written: int, frac: float) -> UserError | None:
    """The clear error for a preparation that ran out of disk, else None (another OSError).

    pyarrow's short write says "N requested and M written" without an errno: the disk's free
    space decides then."""
    try:
        free = shutil.disk_usage(root).free
    except OSError:
        free = None
    full = e.errno in (errno.ENOSPC, errno.EDQUOT) or (free is not None and free < (1 << 20))
    if not full:
        return None
    need = f"about {_mib(written / frac)}" if frac > 0 else f"more than {_mib(written)}"
    return UserError(
        f"{root}: the disk is full while preparing the data (it needs {need}; "
        f"{_mib(free or 0)} free there, {_mib(written)} written before it filled up; nothing kept)",
        "free space on that disk, or set dataset_prepared_path to a folder on a disk with room; "
        "the same command then prepares the data again",
    )


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB" if n >= 2**20 else f"{n / 2**10:,.0f} KiB"


# ---- stats in meta.json -------------------------------------------------------------------


def stats_to_json(s: Stats) -> dict:
    return {
        "rows_by_file": s.rows_by_file,
        "rows_by_category": s.rows_by_category,
        "tokens_by_category": s.tokens_by_category,
        "trained_by_category": s.trained_by_category,
        "lengths": {str(k): v for k, v in sorted(s.lengths.items())},
        "bad": [list(b) for b in s.bad],
        "too_long": [list(t) for t in s.too_long],
        "too_long_count": s.too_long_count,
        "notes": {n: [list(r) for r in rows] for n, rows in s.notes.items()},
        "notes_count": s.notes_count,
    }


def stats_from_json(d: dict) -> Stats:
    s = Stats(
        rows_by_file=dict(d["rows_by_file"]),
        rows_by_category=dict(d["rows_by_category"]),
        tokens_by_category=dict(d["tokens_by_category"]),
        trained_by_category=dict(d["trained_by_category"]),
        bad=[tuple(b) for b in d["bad"]],
        too_long=[tuple(t) for t in d["too_long"]],
        too_long_count=d["too_long_count"],
        notes={n: [tuple(r) for r in rows] for n, rows in d.get("notes", {}).items()},
        notes_count=dict(d.get("notes_count", {})),
    )
    s.lengths.update({int(k): v for k, v in d["lengths"].items()})
    return s
