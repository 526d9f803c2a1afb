"""The checklist's state on disk: ``checklist.json`` and its good copy ``checklist.json.prev``.

The ticks and notes are the only state of a run that cannot be measured again, so each write
carries a sha256 of its own content and is made twice, each atomic (the file, then its copy):
a damaged, emptied or deleted file is read back from the other one, with a note saying what was
restored. A file written before digests has none and is read as it is.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from engine.run.rundir import CHECKLIST, atomic_write_json

PREV = CHECKLIST + ".prev"


def _digest(state: dict) -> str:
    body = {k: v for k, v in state.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def _read(path: Path) -> tuple[dict | None, str]:
    """(state, "") or (None, why it cannot be used)."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None, "missing"
    except (OSError, ValueError) as e:
        return None, f"unreadable ({type(e).__name__})"
    if not isinstance(data, dict):
        return None, "not a JSON object"
    if "digest" in data and data["digest"] != _digest(data):
        return None, "its checksum does not match its content"
    return data, ""


def load(run_dir: str | Path) -> tuple[dict, list[str]]:
    """The state and what was said about it (a copy restored, ticks lost)."""
    main, prev = Path(run_dir) / CHECKLIST, Path(run_dir) / PREV
    state, why = _read(main)
    notes: list[str] = []
    if state is None and why != "missing" or state is None and prev.exists():
        state, why_prev = _read(prev)
        if state is not None:
            notes.append(f"checklist state damaged: {main} {why}: restored from {prev}, ticks and notes kept")
        elif why != "missing" or why_prev != "missing":
            notes.append(
                f"checklist state damaged: {main} {why} and {prev} {why_prev}: the manual ticks and "
                "notes are lost (tick them again: leviathan-cockpit checklist RUN --tick ID)"
            )
    state = state or {}
    state.setdefault("version", 1)
    state.setdefault("items", {})
    return state, notes


def save(run_dir: str | Path, state: dict) -> None:
    state["digest"] = _digest(state)
    atomic_write_json(Path(run_dir) / CHECKLIST, state)
    atomic_write_json(Path(run_dir) / PREV, state)  # the good copy: a crash between keeps one whole
