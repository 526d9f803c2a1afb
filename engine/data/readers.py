"""Dataset files to records: local JSONL (plain or gzip), JSON, Parquet, Arrow, a folder of
them, or a hub dataset already in the local Hugging Face cache; ``split`` slices.

Each record comes with where it is, for bad-row messages: the line for text formats (JSONL,
and JSON with one object a line), the row number (from 1) for binary formats and JSON arrays.
Nothing is downloaded: a hub id not in the cache is one message saying how to get it.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from pathlib import Path

from engine.config.dataset_kinds import parse_split
from engine.errors import UserError

SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet", ".arrow")


def _bound(b: str | None, n: int, default: int) -> int:
    if b is None:
        return default
    v = int(round(float(b[:-1]) * n / 100)) if b.endswith("%") else int(b)  # HF's "closest" rounding
    v = n + v if v < 0 else v
    return max(0, min(n, v))


def split_range(split: str | None, n_rows, where: str, hub: bool = False) -> range | None:
    """The row indices a split keeps (None: all). ``n_rows`` is called only when needed."""
    if split is None:
        return None
    name, start, stop = parse_split(split)
    if name != "train" and not hub:
        raise UserError(
            f"{where}: split `{name}`: a local file has one split, `train`",
            "use `split: train` (or a slice of it, e.g. train[:20%])",
        )
    if start is None and stop is None:
        return None
    n = n_rows() if any(b and (b.endswith("%") or b.startswith("-")) for b in (start, stop)) else 10**18
    return range(_bound(start, n, 0), _bound(stop, n, n))


HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def is_hub_id(path: str) -> bool:
    """``owner/name`` that is not a local path (relative paths were resolved by the config)."""
    return not Path(path).exists() and bool(HUB_ID.fullmatch(path)) and not path.endswith(SUFFIXES)


def size_of(path: str) -> int:
    """Bytes of a local dataset (0 for a hub id): decides in-memory vs on-disk preparation."""
    if is_hub_id(path):
        return 0
    return sum(f.stat().st_size for f in files_of(path))


def files_of(path: str, data_files: list[str] | str | None = None) -> list[Path]:
    """The data files of a local file or folder (in a folder, only those matching
    ``data_files`` globs when given); UserError when there are none."""
    p = Path(path)
    if data_files and p.is_dir():
        import fnmatch

        globs = [data_files] if isinstance(data_files, str) else list(data_files)
        found = [f for f in files_of(path) if any(fnmatch.fnmatch(str(f.relative_to(p)), g) for g in globs)]
        if not found:
            raise UserError(
                f"{path}: no file matches data_files {globs}", "fix `data_files` (paths inside the folder)"
            )
        return found
    if p.is_file():
        if not p.name.endswith(SUFFIXES):
            raise UserError(
                f"{path}: not a dataset file this engine reads", f"use one of {', '.join(SUFFIXES)}"
            )
        return [p]
    if p.is_dir():
        found = sorted(_walk(p))
        if not found:
            raise UserError(
                f"{path}: no {', '.join(SUFFIXES)} files in this folder", "point `path` at the data"
            )
        return found
    raise UserError(f"{path}: dataset file not found", "fix `datasets[].path` in the config")


def _walk(top: Path) -> list[Path]:
    """The data files under ``top``, following symlinked folders and files (``rglob`` skips a
    symlinked folder: its data would be left out without a word). Each real folder and file is
    read once: a link that loops back, or a second way to the same data, is refused by name."""
    import os

    seen: dict[tuple[int, int], Path] = {}
    found = []

    def once(path: Path, what: str) -> bool:
        st = path.stat()
        first = seen.setdefault((st.st_dev, st.st_ino), path)
        if first == path:
            return True
        loop = first in path.parents
        raise UserError(
            f"{path}: a symlink to the {what} {first}"
            + (" that holds it (a loop)" if loop else ", already read: its data would count twice"),
            "remove the link, or point `datasets[].path` at the folders you mean",
        )

    for root, dirs, files in os.walk(top, followlinks=True):
        here = Path(root)
        once(here, "folder")
        dirs.sort()
        for name in sorted(files):
            f = here / name
            if name.endswith(SUFFIXES) and f.is_file() and once(f, "file"):
                found.append(f)
    return found


def _open(p: Path):
    return gzip.open(p, "rb") if p.name.endswith(".gz") else p.open("rb")


def _json_array(p: Path) -> list | None:
    """A .json file holding one array (None when it is JSON lines instead)."""
    with _open(p) as f:
        head = f.read(4096).lstrip()
    if not head.startswith(b"["):
        return None
    with _open(p) as f:
        try:
            data = json.load(f)
        except ValueError as e:
            raise UserError(
                f"{p}: not valid JSON ({e})", "fix the file, or write one JSON object a line"
            ) from None
    return data if isinstance(data, list) else None


def records(p: Path) -> Iterator[tuple[int, bytes | object]]:
    """(line or row, raw line bytes or decoded object) of one local file; blank lines skipped."""
    name = p.name
    if name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz")):
        array = _json_array(p) if ".json" in name and ".jsonl" not in name else None
        if array is not None:
            yield from enumerate(array, 1)
            return
        with _open(p) as f:
            for lineno, raw in enumerate(f, 1):
                if raw.strip():
                    yield lineno, raw
    elif name.endswith(".parquet"):
        import pyarrow.parquet as pq

        row = 0
        for batch in pq.ParquetFile(p).iter_batches(batch_size=1024):
            for obj in batch.to_pylist():
                row += 1
                yield row, obj
    elif name.endswith(".arrow"):
        from datasets import Dataset

        yield from enumerate(Dataset.from_file(str(p)), 1)


def count(p: Path) -> int:
    return sum(1 for _ in records(p))


def hub_snapshot(repo_id: str) -> Path | None:
    """The folder of a hub dataset downloaded as files (``huggingface-cli download --repo-type
    dataset``) in the local cache; None when it is not there."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, repo_type="dataset", local_files_only=True))
    except Exception:  # LocalEntryNotFoundError and friends: not in the cache
        return None


def split_files(root: Path, files: list[Path], split: str | None) -> list[Path]:
    """The files of one split in a hub snapshot: those naming it (``train-00000.parquet``,
    ``data/train.jsonl``), or all of them when none does (a single-split dataset)."""
    name = parse_split(split)[0] if split else "train"
    rel = {f: str(f.relative_to(root)) for f in files}
    named = [f for f in files if re.search(rf"(^|[/_.-]){re.escape(name)}([/_.-]|$)", rel[f])]
    if named:
        return named
    splits = {"train", "test", "validation", "valid", "dev"}
    if any(re.search(rf"(^|[/_.-]){s}([/_.-]|$)", r) for r in rel.values() for s in splits):
        raise UserError(f"no `{name}` split in {root}", "set `split:` to one the dataset has")
    return files


def hub_rows(path: str, name: str | None, split: str | None, data_files) -> Iterator[tuple[int, object]]:
    """Rows of a hub dataset from the local cache only."""
    import os

    os.environ["HF_DATASETS_OFFLINE"] = "1"  # never a download, whatever the caller's environment
    import datasets

    try:
        ds = datasets.load_dataset(path, name, split=split or "train", data_files=data_files)
    except Exception as e:  # not cached, no such split, bad name: datasets raises many types
        raise UserError(
            f"{path}: not a local file or folder, and not usable from the local Hugging Face cache "
            f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})",
            f"download it once (`huggingface-cli download --repo-type dataset {path}`, or "
            f"`python -c \"import datasets; datasets.load_dataset('{path}')\"`) or give a local file",
        ) from None
    yield from enumerate(ds, 1)
