"""Post-training steps (merge, quantize, export ..., push): one registry that the command line
and the cockpit's ship menu both read.

A step is a module of this package that calls ``register(Step(...))`` at import time. The
``Step`` says everything both sides need:

- the command line: ``command`` (``("merge",)``, or ``("export", "ollama")`` for a target of
  ``export``), ``help``, ``add_args(parser)`` and ``run(args) -> exit code`` (it prints what it
  did);
- the cockpit's menu: ``actions``, one ``MenuAction`` a line (a step may offer several, as
  ``push`` does with its dry run): the line's text, ``check(choice)`` (raise ``UserError``: the
  menu shows it before any job starts), ``job(choice, run_dir) -> Job`` (the engine function
  the cockpit runs as a background job, with its arguments and a one-line summary of its
  result), and the checklist item the action makes pass (``g`` on that item opens the menu
  there).

Adding a step is one file here: ``steps()`` imports every module of the package, so the CLI's
commands, ``--help`` and the menu follow. Modules stay import-light (``--help`` must answer at
once): the work is imported inside ``run`` and ``job``.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import UserError


@dataclass
class ShipChoice:
    """What the ship menu gathered: the action and the folders it acts on."""

    action: str
    checkpoint: Path | None
    merged_out: Path | None
    """Where a merge writes."""
    model_dir: Path | None
    """The folder quantize, export and push act on."""
    repo_id: str = ""


# (label, engine function, args, kwargs, result -> one line)
Job = tuple[str, Callable[..., Any], tuple, dict, Callable[[Any], str]]


@dataclass(frozen=True)
class MenuAction:
    id: str
    label: str
    check: Callable[[ShipChoice], None]
    job: Callable[[ShipChoice, Path | None], Job]
    ticks: str = ""
    """The checklist item (default id) this action makes pass, if any."""


@dataclass(frozen=True)
class Step:
    command: tuple[str, ...]
    help: str
    add_args: Callable[[Any], None]
    run: Callable[[Any], int]
    order: int
    actions: tuple[MenuAction, ...] = field(default=())
    title: str = ""
    """A target's name in its command's help (``export``: "Ollama Modelfile or vLLM server command")."""


_STEPS: dict[tuple[str, ...], Step] = {}


def register(step: Step) -> Step:
    _STEPS[step.command] = step
    return step


def steps() -> list[Step]:
    """Every registered step, in ``order`` (the menu's and ``--help``'s)."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
    return sorted(_STEPS.values(), key=lambda s: s.order)


def menu_actions() -> list[MenuAction]:
    return [a for s in steps() for a in s.actions]


def action(action_id: str) -> MenuAction:
    for a in menu_actions():
        if a.id == action_id:
            return a
    raise KeyError(action_id)


def commands() -> dict[str, str]:
    """Top-level command -> its help; a command with targets (``export``) names theirs."""
    out: dict[str, Any] = {}
    for s in steps():
        if len(s.command) == 1:
            out[s.command[0]] = s.help
        else:
            out.setdefault(s.command[0], []).append(s.title or s.command[1])
    return {k: v if isinstance(v, str) else f"{_or(v)} for a merged model" for k, v in out.items()}


def _or(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def add_commands(sub) -> None:
    """Fill the top-level parsers (made from ``commands()``) with each step's arguments and handler."""
    targets: dict[str, Any] = {}
    for s in steps():
        parser = sub.choices[s.command[0]]
        if len(s.command) == 2:
            if s.command[0] not in targets:
                targets[s.command[0]] = parser.add_subparsers(dest="target", metavar="TARGET", required=True)
            parser = targets[s.command[0]].add_parser(s.command[1], help=s.help)
        s.add_args(parser)
        parser.set_defaults(handler=s.run)


# -- what several steps share ---------------------------------------------------------------


def need_model_dir(choice: ShipChoice) -> Path:
    """The menu's model folder, there and a model (quantize, export and push act on it)."""
    from engine.ship import quantize

    if choice.model_dir is None:
        raise UserError("model folder: no folder given", "type the merged folder")
    if not choice.model_dir.exists():
        raise UserError(
            f"{choice.model_dir}: no such folder yet", "merge a checkpoint first, or type a merged folder"
        )
    quantize.check_model_dir(choice.model_dir)
    return choice.model_dir


def must_be_new(path: Path, fix: str) -> None:
    if path.exists():
        raise UserError(f"{path} already exists; the cockpit never replaces a folder", fix)


def stderr_progress(fraction: float, message: str) -> None:
    print(f"[{fraction * 100:3.0f}%] {message}", file=sys.stderr, flush=True)


def silent(fraction: float, message: str) -> None:
    pass


def quiet_transformers() -> None:
    """Our progress lines replace the libraries' bars and advice on the terminal.

    Environment only, read when transformers is first imported: a command that stops at a
    bad argument never pays for importing it.
    """
    import os
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", category=FutureWarning)


def size(n: int) -> str:
    from engine.run.lineage import human_size

    return human_size(n)


def print_ollama_try(modelfile) -> None:
    """The two commands that make a written Modelfile an Ollama model and ask it something."""
    print("create and try it:")
    print(f"  {modelfile.create_command}")
    print(f'  ollama run {modelfile.name} "Who are you?"')
