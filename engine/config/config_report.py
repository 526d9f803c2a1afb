"""The config's problems as one report: each at its file:line, with its fix.

``Problem`` is one finding; ``report`` turns a list of them into the one ``UserError`` the CLI
prints (exit 2). Pydantic's errors are explained here too (``explain``): every error of a
validation, not just the first, with the key's line. Imports only yaml and pydantic.
"""

from __future__ import annotations

import contextlib
import difflib
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from engine.errors import UserError


class KeyError_(ValueError):
    """Raised by a validator to name the exact sub-key at fault (``loc`` below the field)."""

    def __init__(self, loc: tuple, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.loc, self.message, self.fix = loc, message, fix


@dataclass
class Problem:
    where: str
    """``FILE:LINE`` (or the file alone when the key has no line, e.g. a command-line override)."""
    message: str
    fix: str = ""


def key_lines(text: str) -> dict[tuple, int]:
    """Line numbers of every mapping key, by its path, for messages that point at a line."""
    lines: dict[tuple, int] = {}

    def walk(node, path):
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = path + (k.value,)
                lines[key] = k.start_mark.line + 1
                walk(v, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                lines[path + (i,)] = v.start_mark.line + 1
                walk(v, path + (i,))

    with contextlib.suppress(yaml.YAMLError):
        walk(yaml.compose(text), ())
    return lines


def where(file: str, lines: dict[tuple, int], loc: tuple) -> str:
    while loc and loc not in lines:
        loc = loc[:-1]
    return f"{file}:{lines[loc]}" if loc else file


def report(problems: list[Problem]) -> UserError:
    """One problem: its own message and fix. Several: all of them, each with its fix, in file order."""

    def order(p: Problem):
        _, _, line = p.where.rpartition(":")
        return int(line) if line.isdigit() else 0

    return UserError.several(
        [UserError(f"{p.where}: {p.message}", p.fix) for p in sorted(problems, key=order)],
        "problems in the config",
        "fix each key above (the arrow says how)",
    )


def suggest(name: str, candidates: list[str]) -> str | None:
    """A close key with a related meaning: same first word, or nearly the same spelling."""
    for close in difflib.get_close_matches(name, candidates, n=3, cutoff=0.6):
        if (
            close.split("_")[0] == name.split("_")[0]
            or difflib.SequenceMatcher(None, name, close).ratio() >= 0.85
        ):
            return close
    return None


def _model_at(root: type[BaseModel], loc: tuple) -> type[BaseModel]:
    """The pydantic model class that owns the keys at ``loc`` (list indices skipped)."""
    model = root
    for part in loc:
        if isinstance(part, int) or part not in model.model_fields:
            continue
        annotation = model.model_fields[part].annotation
        for c in [annotation, *typing.get_args(annotation)]:
            c = next((a for a in typing.get_args(c) if isinstance(a, type) and issubclass(a, BaseModel)), c)
            if isinstance(c, type) and issubclass(c, BaseModel):
                model = c
                break
    return model


def dotted(loc: tuple) -> str:
    """('curriculum', 'phases', 1, 'weights', 'coding') -> curriculum.phases[1].weights.coding"""
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def explain(e: ValidationError, root: type[BaseModel], file: Path, lines: dict[tuple, int]) -> list[Problem]:
    """Every error of a validation as a Problem (unions report one error per member: one is kept)."""
    out, seen = [], set()
    for err in e.errors():
        p = _explain_one(err, root, str(file), lines)
        if p.where + p.message.split(":")[0] not in seen:
            seen.add(p.where + p.message.split(":")[0])
            out.append(p)
    return out


def _explain_one(err: dict, root: type[BaseModel], file: str, lines: dict[tuple, int]) -> Problem:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p in _UNION_TAGS)))
    exc = err.get("ctx", {}).get("error")
    if isinstance(exc, KeyError_):  # a validator that names the sub-key at fault
        loc = loc + exc.loc
        return Problem(where(file, lines, loc), f"`{dotted(loc)}`: {exc.message}", exc.fix)
    at = where(file, lines, loc)
    if not loc:  # a check across keys that did not name one
        return Problem(at, err["msg"].removeprefix("Value error, "), "")
    key = ".".join(str(p) for p in loc)
    if err["type"] == "missing":
        return Problem(at, f"required key `{key}` is missing", f"add `{key}:` to the config")
    if err["type"] == "extra_forbidden":
        parent = _model_at(root, loc[:-1])
        close = suggest(str(loc[-1]), list(parent.model_fields))
        hint = f"did you mean `{close}`?" if close else f"allowed: {', '.join(parent.model_fields)}"
        return Problem(at, f"unknown key `{key}`", hint)
    allowed = err.get("ctx", {}).get("expected") or err["msg"].removeprefix("Value error, ")
    return Problem(at, f"bad value for `{key}`: {err.get('input')!r}", str(allowed))


_UNION_TAGS = {"str", "int", "float", "bool", "list[str]", "dict[str,str]", "literal['auto']", "none"}
