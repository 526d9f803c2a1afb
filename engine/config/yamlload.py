"""Reading a YAML config without silent surprises: a duplicate key is an error naming both
lines (PyYAML keeps the last value), and a YAML boolean (``yes``, ``true``, ``on``) is not a
number (pydantic would read ``lora_r: yes`` as 1).

``load_yaml`` replaces ``yaml.safe_load``; ``booleans_as_numbers`` checks the loaded mapping
against a pydantic model's fields, so it follows the schema whatever its tables become.
"""

from __future__ import annotations

import contextlib
import types
import typing
from pathlib import Path

import yaml
from pydantic import BaseModel

from engine.errors import UserError


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that records every key given twice in one mapping (merge keys ``<<`` aside)."""

    def __init__(self, stream) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[str, int, int]] = []  # (key, first line, second line)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                with contextlib.suppress(TypeError):  # an unhashable key: SafeLoader reports it
                    line = key_node.start_mark.line + 1
                    if key in seen:
                        self.duplicates.append((str(key), seen[key], line))
                    else:
                        seen[key] = line
        return super().construct_mapping(node, deep)


def load_yaml(text: str, file: str | Path):
    """``yaml.safe_load`` that refuses duplicate keys, each named with both of its lines.

    Raises ``yaml.YAMLError`` for bad syntax (the caller reports it) and UserError for duplicates.
    """
    loader = _StrictLoader(text)
    try:
        data = loader.get_single_data()
    finally:
        loader.dispose()
    if loader.duplicates:
        listed = "\n  ".join(
            f"{file}:{second}: `{key}` is given again (first at line {first})"
            for key, first, second in loader.duplicates
        )
        raise UserError(
            listed if len(loader.duplicates) == 1 else "duplicate keys:\n  " + listed,
            "keep one of each: YAML would silently use the last one",
        )
    return data


# -- booleans are not numbers ----------------------------------------------------------------


def _types(annotation) -> set:
    """The plain types an annotation accepts (unions and Optional unwrapped, Annotated too)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _types(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        out: set = set()
        for arg in typing.get_args(annotation):
            out |= _types(arg)
        return out
    if origin is typing.Literal:
        return {type(v) for v in typing.get_args(annotation)}
    return {origin or annotation}


def _model_of(annotation) -> type[BaseModel] | None:
    for t in _types(annotation):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


def _item_model(annotation) -> type[BaseModel] | None:
    for arg in typing.get_args(annotation):
        for t in _types(arg):
            if isinstance(t, type) and issubclass(t, BaseModel):
                return t
    return None


def _walk(data, model: type[BaseModel], path: tuple, out: list[tuple[tuple, str]]) -> None:
    if not isinstance(data, dict):
        return
    for key, value in data.items():
        field = model.model_fields.get(str(key))
        if field is None:
            continue
        accepts = _types(field.annotation)
        here = (*path, key)
        if isinstance(value, bool):
            numeric = accepts & {int, float}
            if numeric and bool not in accepts:
                out.append((here, "int" if int in numeric else "float"))
            continue
        sub = _model_of(field.annotation)
        if sub is not None and isinstance(value, dict):
            _walk(value, sub, here, out)
        item = _item_model(field.annotation)
        if item is not None and isinstance(value, list):
            for i, v in enumerate(value):
                _walk(v, item, (*here, i), out)


def _lines(text: str) -> dict[tuple, tuple[int, str]]:
    """(line, the value as written) of every mapping key, by its path."""
    lines: dict[tuple, tuple[int, str]] = {}

    def walk(node, path):
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                lines[(*path, k.value)] = (k.start_mark.line + 1, getattr(v, "value", ""))
                walk(v, (*path, k.value))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, (*path, i))

    with contextlib.suppress(yaml.YAMLError):
        walk(yaml.compose(text), ())
    return lines


def boolean_problems(data: dict, model: type[BaseModel], file: str | Path, text: str = "") -> list:
    """(FILE:LINE, message) for every numeric key given a YAML boolean (yes/no/true/false/on/off)."""
    found: list[tuple[tuple, str]] = []
    _walk(data, model, (), found)
    lines = _lines(text) if text and found else {}
    out = []
    for path, kind in found:
        name = ".".join(str(p) for p in path)
        line, written = lines.get(path, (None, ""))
        where = f"{file}:{line}" if line else str(file)
        value = written if isinstance(written, str) and written else str(data_at(data, path)).lower()
        out.append((where, f"`{name}` must be a number ({kind}); `{value}` is a YAML boolean"))
    return out


BOOLEAN_FIX = "write the number (YAML reads yes/no/true/false/on/off as booleans)"


def booleans_as_numbers(data: dict, model: type[BaseModel], file: str | Path, text: str = "") -> None:
    """Raise one UserError naming every numeric key given a YAML boolean."""
    msgs = [f"{where}: {message}" for where, message in boolean_problems(data, model, file, text)]
    if msgs:
        raise UserError(
            msgs[0] if len(msgs) == 1 else "booleans where numbers belong:\n  " + "\n  ".join(msgs),
            BOOLEAN_FIX,
        )


def data_at(data, path: tuple):
    for p in path:
        data = data[p]
    return data
