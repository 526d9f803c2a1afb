"""What can be checked before any work starts, all at once: the paths a run reads and writes.

``train`` runs it before it takes a lock or writes a byte, ``check`` before it loads anything,
so a bad setup is one exit 2 naming every problem instead of a traceback half way in.
"""

from __future__ import annotations

from pathlib import Path

from engine.errors import UserError

_WHITESPACE = b" \t\r\n\f\v"


def dataset_problem(path: str | Path) -> str | None:
    """Why a dataset path cannot be read as a data file, or None."""
    p = Path(path)
    if p.is_dir():
        return f"{p}: a folder, not a data file (folders of data files are not read yet)"
    if not p.exists():
        return f"{p}: dataset file not found"
    if not p.is_file():
        return f"{p}: not a regular file"
    try:
        with open(p, "rb") as f:
            while chunk := f.read(1 << 20):  # the first non-blank byte ends it: at once, for real data
                if chunk.strip(_WHITESPACE):
                    return None
    except OSError as e:
        return f"{p}: cannot be read ({e.strerror})"
    return (
        f"{p}: the data file is empty"
        if p.stat().st_size == 0
        else f"{p}: the data file holds only blank lines"
    )


def output_dir_problem(output_dir: str | Path) -> str | None:
    p = Path(output_dir)
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        return f"output_dir {output_dir}: {p} is a file, not a folder"
    return None


DATA_FIX = "point `datasets[].path` at a JSONL file with one example a line"
OUTPUT_FIX = "point output_dir at a folder (it is created if missing), or move that file away"


def problems(config) -> list[UserError]:
    """Every problem found, each with its fix."""
    found = [UserError(p, DATA_FIX) for p in map(dataset_problem, (s.path for s in config.datasets)) if p]
    out = output_dir_problem(config.output_dir)
    if out:
        found.append(UserError(out, OUTPUT_FIX))
    if not config.base_model.startswith("builtin:") and Path(config.base_model).is_dir():
        from engine.model import check_model_folder

        try:
            check_model_folder(Path(config.base_model))
        except UserError as e:
            found.append(e)
    return found


def check_setup(config) -> None:
    """Raise one UserError listing every problem found, with the fix of each."""
    found = problems(config)
    if len(found) == 1:
        raise found[0]
    if found:
        raise UserError(
            "\n  ".join(["the setup cannot work:", *(e.message for e in found)]),
            "; ".join(dict.fromkeys(e.fix for e in found)),
        )
