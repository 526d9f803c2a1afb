"""Axolotl's named chat templates (``chat_template: NAME``), vendored as package assets.

The ``.jinja`` files beside this module are Axolotl's own (see ``SOURCES``); a name resolves
the way Axolotl's ``get_chat_template`` resolves it: ``tokenizer_default`` keeps the
tokenizer's template, ``tokenizer_default_fallback_NAME`` keeps it when there is one and uses
NAME otherwise, ``jinja`` takes ``chat_template_jinja`` (the template text, or a file's path).
Stdlib only.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

FALLBACK_PREFIX = "tokenizer_default_fallback_"


def names() -> list[str]:
    """Every named template shipped here, sorted."""
    folder = resources.files(__name__)
    return sorted(p.name[: -len(".jinja")] for p in folder.iterdir() if p.name.endswith(".jinja"))


def template(name: str) -> str:
    """The Jinja text of a named template; KeyError when there is none by that name."""
    path = resources.files(__name__) / f"{name}.jinja"
    if not path.is_file():
        raise KeyError(name)
    return path.read_text(encoding="utf-8")


def is_known(choice: str) -> bool:
    """A ``chat_template`` value this engine can resolve."""
    if choice in ("tokenizer_default", "jinja"):
        return True
    return choice.removeprefix(FALLBACK_PREFIX) in names()


def resolve(choice: str, jinja: str | None, tokenizer_template: str | None) -> str | None:
    """The template text a ``chat_template`` choice stands for (None: the tokenizer has none)."""
    if choice == "jinja":
        if jinja and "{" not in jinja and Path(jinja).is_file():
            return Path(jinja).read_text(encoding="utf-8")
        return jinja
    if choice == "tokenizer_default":
        return tokenizer_template
    if choice.startswith(FALLBACK_PREFIX):
        return tokenizer_template or template(choice[len(FALLBACK_PREFIX) :])
    return template(choice)


CHATML_TEMPLATE = template("chatml")
