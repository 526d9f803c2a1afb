"""The validation checklist: the guide's gates, measured where they can be, ticked where not.

Two default groups, from the guide: ``validation`` (the 10% run's critical checks: "if ANY
check fails, debug on the 10% dataset before proceeding") and ``post_training`` (its
fifteen-item list). Each item is either automatic, a rule over the run log, the files
(checkpoints, the merged and quantized folders) or an evaluation result, showing the
measured value, pass/fail and when it was measured; or manual, ticked by the operator with
an optional note. Any item may be ticked by hand (say the upload was done by hand); the
tick and its note are kept beside the measurement.

The config's ``checklist:`` section changes items by id (thresholds, title, required,
``enabled: false``) or adds new ones. State lives in ``logs/<run>/checklist.json``, written
atomically under a file lock, so it survives restarts and is shared by the cockpit, an
``attach`` and ``leviathan-cockpit checklist RUN_DIR``.

This module keeps the state and measures the items; the items are in ``checklist_items``, the
rules in ``checklist_rules``, the command line in ``engine.cli.checklist_cli``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from engine.errors import UserError
from engine.evaluate import checklist_state
from engine.evaluate.checklist_items import ItemStatus, Measure, build_items
from engine.evaluate.checklist_rules import RULES, Sources
from engine.run.rundir import CHECKLIST, EVENTS, RunDir

STATE_FILE = CHECKLIST  # engine.run.rundir names it


@contextmanager
def _locked(run_dir: Path):
    """Serialise read-modify-write of checklist.json between the cockpit and the CLI."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(RunDir(run_dir).checklist_lock, "a") as f:
        try:
            import fcntl

            fcntl.flock(f, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - not POSIX
            pass
        yield


def load_state(run_dir: str | Path, notes: list[str] | None = None) -> dict:
    """The state (checklist_state: from its good copy when damaged; ``notes`` gets what was said)."""
    state, said = checklist_state.load(run_dir)
    if notes is not None:
        notes.extend(said)
    return state


def update_state(run_dir: Path, change: Callable[[dict], None], notes: list[str] | None = None) -> dict:
    with _locked(run_dir):
        state = load_state(run_dir, notes)
        change(state)
        state["updated_at"] = time.time()
        checklist_state.save(run_dir, state)
        return state


def run_folder(run_dir: str | Path) -> Path:
    p = Path(run_dir)
    if p.name == EVENTS:
        p = p.parent
    if not p.is_dir():
        raise UserError(f"{run_dir}: no such run folder", "give a run folder such as logs/<run-name>")
    return p


def tick(run_dir: str | Path, item_id: str, note: str | None = None, done: bool = True, config=None) -> None:
    """Tick (or untick) an item by hand, with an optional note."""
    run_dir = run_folder(run_dir)
    ids = [i.id for i in build_items(config if config is not None else saved_config(run_dir))]
    if item_id not in ids:
        raise UserError(f"no checklist item `{item_id}`", f"items: {', '.join(ids)}")

    def change(state):
        entry = state["items"].setdefault(item_id, {})
        entry.update(ticked=done, ticked_at=time.time() if done else None)
        if note is not None or not done:
            entry["note"] = note or ""

    update_state(run_dir, change)


def saved_config(run_dir: Path):
    from engine.config.saved_config import run_config

    return run_config(run_dir)


def evaluate(
    run_dir: str | Path, config=None, *, save: bool = True, notes: list[str] | None = None
) -> list[ItemStatus]:
    """Measure every item now; keeps the ticks, and when each status last changed.

    ``notes`` gets what was found damaged on the way (the state restored from its good copy, a
    run log or chat transcript that lost records): the CLI prints it, the card carries it.
    """
    run_dir = run_folder(run_dir)
    config = config if config is not None else saved_config(run_dir)
    items = build_items(config)
    now = time.time()
    out: list[ItemStatus] = []

    def change(state):
        src = Sources(run_dir, config, state)
        if notes is not None:
            notes.extend(m for m in src.damage if m not in notes)
        out.clear()
        for item in items:
            prev = state["items"].get(item.id, {})
            m = Measure("pending", detail="tick by hand") if item.manual else RULES[item.rule](src, item)
            measured = m.status
            status = "pass" if prev.get("ticked") else measured
            changed = prev.get("changed_at") if prev.get("status") == status else now
            st = ItemStatus(
                item.id,
                item.title,
                item.group,
                "manual" if item.manual else "auto",
                item.required,
                status,
                m.value,
                m.detail,
                m.when,
                changed,
                bool(prev.get("ticked")),
                prev.get("note", ""),
                prev.get("ticked_at"),
                None if item.manual else measured,
            )
            out.append(st)
            keep = {k: prev[k] for k in ("ticked", "note", "ticked_at") if k in prev}
            state["items"][item.id] = {
                **keep,
                "status": status,
                "measured": st.measured,
                "value": m.value,
                "detail": m.detail,
                "when": m.when,
                "changed_at": changed,
                "checked_at": now,
            }

    if save:
        update_state(run_dir, change, notes)
    else:
        change(load_state(run_dir, notes))
    return out


def failing(items: list[ItemStatus]) -> list[ItemStatus]:
    return [i for i in items if i.required and not i.ok]
