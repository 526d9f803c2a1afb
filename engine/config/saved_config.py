"""A run folder's ``config.yaml`` read back as a checked ``RunConfig``.

Apart from ``engine.run.rundir`` so the run-folder layer imports no config schema (and pydantic).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from engine.config.config import RunConfig, validate
from engine.run.rundir import CONFIG, run_config_raw


def run_config(run_dir: str | Path):
    """The run's ``RunConfig``, or None when the folder has no readable config.yaml."""
    raw = run_config_raw(run_dir)
    if not raw:
        return None
    config, _ = validate(raw, Path(run_dir) / CONFIG)
    return config


def write_handoff(config: RunConfig, notes: list[str], path: str | Path) -> None:
    """The config a launcher loaded and checked, for its trainer processes (``read_handoff``):
    they train on exactly this, without reading or validating the user's file again."""
    path = Path(path)
    data = {
        "config": config.model_dump(mode="json"),
        "notes": list(notes),
        "defaults_differ": list(config._defaults_differ),
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def read_handoff(path: str | Path) -> tuple[RunConfig, list[str]]:
    """The launcher's config and its notes (already validated: the resolved values, as dumped)."""
    data = json.loads(Path(path).read_text())
    config = RunConfig.model_validate(data["config"])
    config._defaults_differ = list(data.get("defaults_differ") or [])
    return config, list(data.get("notes") or [])
