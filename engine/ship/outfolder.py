"""The folders merge and quantize write: checked before, swapped in whole, leftovers cleared.

A model folder is written beside its destination as ``.<name>.partial-<pid>`` and renamed into
place at the end (an old one, with ``--force``, set aside as ``.<name>.old-<pid>`` and then
removed), so a reader never sees half a model. ``--force`` replaces only what this tool wrote:
an empty folder or a model folder holding the lineage marker (``leviathan_export.json``,
written by merge and quantize); a run folder, a checkpoint folder or anybody's files are never
deleted. A killed merge leaves its ``.partial-<pid>`` (a whole model's bytes) behind: the next
merge or quantize into that folder removes those whose process is dead.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from engine.errors import UserError
from engine.run import lineage
from engine.run.runlock import pid_alive

_LEFTOVER = re.compile(r"^\..+\.(partial|old)-(\d+)$")


def check_output(output: str | Path, force: bool, inputs: list[Path]) -> Path:
    out = Path(output)
    if out.exists() and not force:
        raise UserError(
            f"{output}: already exists", "choose a new output folder, or pass --force to replace it"
        )
    if out.exists() and not out.is_dir():
        raise UserError(f"{output}: exists and is not a folder", "choose a new output folder")
    resolved = out.resolve()
    for p in inputs:
        p = p.resolve()
        if resolved == p or resolved in p.parents:
            raise UserError(f"{output}: this would replace the input {p}", "choose a new output folder")
    if out.is_dir() and not out.is_symlink():
        _ours_to_replace(out)
    elif out.is_symlink():
        raise UserError(
            f"{output}: a symlink; --force replaces a folder, not a link", "choose a new output folder"
        )
    if not resolved.parent.is_dir():
        raise UserError(f"{output}: the folder {resolved.parent} does not exist", "create it first")
    remove_leftovers(resolved.parent)
    return out


def _ours_to_replace(out: Path) -> None:
    """Refuse to replace a folder that is neither empty nor a model folder this tool wrote."""
    names = sorted(p.name for p in out.iterdir())
    if not names or lineage.read_info(out):
        return
    what = "a run folder" if "events.jsonl" in names else "a folder this tool did not write"
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    raise UserError(
        f"{out}: {what} ({shown}); --force replaces only a model folder written by merge or quantize "
        f"(it holds {lineage.INFO}) and would delete these files",
        "choose a new output folder, or move that folder's files away yourself",
    )


def remove_leftovers(parent: Path) -> list[str]:
    """Remove the ``.<name>.partial-<pid>`` and ``.<name>.old-<pid>`` folders of dead processes."""
    removed = []
    for d in parent.iterdir():
        m = _LEFTOVER.match(d.name)
        if m and d.is_dir() and not d.is_symlink() and not pid_alive(int(m.group(2))):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d.name)
    return removed


def replace(tmp: Path, out: Path) -> None:
    """Put ``tmp`` at ``out``; an old ``out`` (with --force) is moved aside first, then removed."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
