"""The run log ``attach`` and the Compare tab's ``a`` open: a run folder's events.jsonl (or the
file itself), checked to be a run log, with a message naming what is wrong and the fix."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

from engine.errors import UserError
from engine.run.rundir import RunDir

SNIFF_LINES = 200


def find_run_log(target: str | Path) -> Path:
    """The events.jsonl of a run folder (or the file itself); UserError when there is none."""
    p = Path(target)
    if not p.exists():
        raise UserError(
            f"{p}: no such file or folder",
            "give a run folder (logs/<run-name>) or its events.jsonl",
        )
    if p.is_dir():
        log = RunDir(p).events
        if not log.is_file():
            runs = sorted(d for d in p.iterdir() if RunDir(d).is_run()) if _listable(p) else []
            fix = (
                "did you mean " + ", ".join(str(r) for r in runs[:5]) + "?"
                if runs
                else "run folders are under the logs dir (./logs/<run-name>, or the config's logs_dir)"
            )
            raise UserError(f"{p}: no run log (events.jsonl) in this folder", fix)
        p = log
    _check_is_run_log(p)
    return p


def _listable(p: Path) -> bool:
    try:
        next(iter(p.iterdir()), None)
        return True
    except OSError:
        return False


def _check_is_run_log(path: Path) -> None:
    from engine.run.events import parse_line

    try:
        with open(path, "rb") as f:
            lines = list(islice(f, SNIFF_LINES))
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})", "check the path and its permissions") from None
    full = [line for line in lines if line.endswith(b"\n") and line.strip()]
    if full and not any(parse_line(line) for line in full):
        raise UserError(
            f"{path}: not a run log: none of its first {len(full)} line(s) is a run record",
            "attach a run folder written by `leviathan-cockpit train` (logs/<run-name>)",
        )
