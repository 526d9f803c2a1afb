"""The config a CLI command works on: the file it names, or the embedded demo."""

from __future__ import annotations

from pathlib import Path

from engine.config.bundled import demo_config_path


def load_for_cli(args):
    """Config from the CLI arguments (the embedded demo when none), with its notes."""
    from engine.config.config import load_config

    path = getattr(args, "config", None) or demo_config_path()
    overrides = {}
    if getattr(args, "max_steps", None):
        overrides["max_steps"] = args.max_steps
    config, notes = load_config(path, overrides)
    return config, notes, Path(path)
