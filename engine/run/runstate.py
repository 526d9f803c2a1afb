"""What a run changed about itself, kept so a resume continues with it.

``leviathan-state.json`` in the output_dir (beside the checkpoints it applies to) holds the
values the engine chose while training: the micro batch and accumulation after an out of
memory, the learning-rate factor after NaN rollbacks, and the history of those changes.
It is written whole (temporary file + rename) the moment a change is made, so a kill
right after still resumes with it. ``--resume never`` starts from a clean state.

Also here: the list of config keys that changed since the run folder's last start, recorded
in the run log when a resume is allowed with them.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.run.rundir import atomic_write_json

NAME = "leviathan-state.json"


@dataclass
class RunState:
    micro_batch_size: int | None = None
    """Set after an out of memory: the micro batch the run goes on with."""
    gradient_accumulation_steps: int | None = None
    derived_from: list[int] | None = None
    """The config's [micro_batch_size, gradient_accumulation_steps] the two above replace."""
    lr_scale: float = 1.0
    """Product of the NaN rollbacks' factors on the configured learning rate."""
    rollbacks: int = 0
    changes: list[dict] = field(default_factory=list)

    def record(self, step: int, what: str, reason: str, **values) -> dict:
        change = {"t": round(time.time(), 3), "step": step, "what": what, "reason": reason, **values}
        self.changes.append(change)
        return change

    def effective(self) -> dict:
        """The values a checkpoint marker records (how the run was training when saved)."""
        out = {"lr_scale": self.lr_scale}
        if self.micro_batch_size:
            out["micro_batch_size"] = self.micro_batch_size
            out["gradient_accumulation_steps"] = self.gradient_accumulation_steps
        return out


def path_in(output_dir: str | Path) -> Path:
    return Path(output_dir) / NAME


def load(output_dir: str | Path) -> RunState:
    try:
        raw = json.loads(path_in(output_dir).read_text())
    except (OSError, ValueError):
        return RunState()
    if not isinstance(raw, dict):
        return RunState()
    known = {k: raw[k] for k in RunState.__dataclass_fields__ if k in raw}
    try:
        return RunState(**known)
    except TypeError:
        return RunState()


def save(output_dir: str | Path, state: RunState) -> None:
    atomic_write_json(path_in(output_dir), asdict(state))


def clear(output_dir: str | Path) -> None:
    path_in(output_dir).unlink(missing_ok=True)


# -- config changes between starts -----------------------------------------------------------


def _flat(d, prefix: str = "") -> dict:
    out = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    else:
        out[prefix] = d
    return out


def config_changes(old_raw: dict, new_raw: dict) -> dict[str, list]:
    """``{dotted.key: [old, new]}`` for every value that differs (lists compared whole)."""
    old, new = _flat(old_raw), _flat(new_raw)
    return {k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


def record_config_changes(run_dir: str | Path, config, log) -> dict[str, list]:
    """On a resume: a ``note`` listing what changed since the run's last start (keys the
    checkpoint depends on were already refused), so the run log says what the rest ran with."""
    from engine.run.rundir import run_config_raw

    old = run_config_raw(run_dir)
    if not old:
        return {}
    changes = config_changes(old, config.model_dump(mode="json"))
    if changes:
        listed = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items())
        log.emit(
            "note",
            message=f"config changed since the last start, resuming with it: {listed}",
            changes=changes,
        )
    return changes
