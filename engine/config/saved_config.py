"""A run folder's ``config.yaml`` read back as a checked ``RunConfig``.

Apart from ``engine.run.rundir`` so the run-folder layer imports no config schema (and pydantic).
"""

from __future__ import annotations

from pathlib import Path

from engine.config.config import validate
from engine.run.rundir import CONFIG, run_config_raw


def run_config(run_dir: str | Path):
    """The run's ``RunConfig``, or None when the folder has no readable config.yaml."""
    raw = run_config_raw(run_dir)
    if not raw:
        return None
    config, _ = validate(raw, Path(run_dir) / CONFIG)
    return config
