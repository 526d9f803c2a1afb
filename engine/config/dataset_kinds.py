"""The dataset `type` names and the `split` syntax a config may use.

The config validates them at load; the readers and encoders in engine/data/ act on them. They
live here, below both, so the config never imports the data stage.
"""

from __future__ import annotations

import re

# Axolotl's alpaca prompt styles (engine/data/prompt_formats.py holds their strings).
ALPACA_STYLES = ("instruct", "chat", "chatml", "phi")
CHAT_TYPES = {"chat_template", "sharegpt"}
TYPES = ("chat_template", "sharegpt", "completion", "custom", *(f"alpaca:{s}" for s in ALPACA_STYLES))
"""``custom``: Axolotl's user-defined prompt (a ``type:`` mapping with field_instruction, format, ...)."""
ALIASES = {
    "chat_template.default": "chat_template",
    "alpaca": "alpaca:instruct",
    "alpaca_chat": "alpaca:chat",
    "alpaca_instruct": "alpaca:instruct",
}


def canonical_type(name: str) -> str:
    """A dataset ``type`` as one of TYPES; ValueError naming the ones there are."""
    name = ALIASES.get(name, name)
    if name not in TYPES:
        raise ValueError(
            f"dataset type {name!r} is not one of chat_template, sharegpt, alpaca, alpaca:chat, "
            "alpaca:chatml, alpaca:phi, alpaca_chat, completion, or a custom mapping "
            "({field_instruction: ..., field_output: ..., format: ...})"
        )
    return name


SPLIT = re.compile(r"^(\w+)(?:\[(-?\d+%?)?:(-?\d+%?)?\])?$")


def parse_split(text: str) -> tuple[str, str | None, str | None]:
    """``train[:20%]`` -> ("train", None, "20%"); ValueError for anything else."""
    m = SPLIT.match(text.replace(" ", ""))
    if not m:
        raise ValueError(
            f"split {text!r} is not NAME or NAME[start:stop] (e.g. train, train[:20%], train[10:100])"
        )
    return m.group(1), m.group(2), m.group(3)
