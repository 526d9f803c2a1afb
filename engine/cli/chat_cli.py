"""``leviathan-cockpit chat CHECKPOINT_OR_MODEL --prompt TEXT``: one answer for scripts; the
arguments and the backend for the chat pane, which ``cockpit.chat_app`` opens.

Top level imports the standard library only: ``--help`` must stay fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_chat_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "target",
        metavar="CHECKPOINT_OR_MODEL",
        help="a checkpoint-N folder (its base comes from adapter_config.json), a model folder or a cached hub id",
    )
    p.add_argument(
        "--base", metavar="MODEL", help="base model for a checkpoint (overrides its adapter_config.json)"
    )
    p.add_argument("--prompt", metavar="TEXT", help="one-shot: print the answer to stdout and exit")
    p.add_argument(
        "--compare", metavar="OTHER", help="with --prompt: also ask OTHER (a checkpoint or `base`)"
    )
    p.add_argument("--max-new-tokens", type=int, metavar="N", help="answer length limit (default 256)")
    p.add_argument("--temperature", type=float, metavar="T", help="0 = greedy (default 0.7)")
    p.add_argument("--top-p", type=float, metavar="P", help="nucleus sampling (default 0.9)")
    p.add_argument("--system", metavar="TEXT", help="system prompt")
    p.add_argument(
        "--run-dir",
        metavar="DIR",
        help="run folder for transcripts (DIR/chat/) and chat settings; default: the run that wrote the checkpoint",
    )


def _settings(args, chat_config):
    from engine.chat.chat import Settings

    defaults = chat_config
    return Settings(
        temperature=args.temperature
        if args.temperature is not None
        else getattr(defaults, "temperature", 0.7),
        top_p=args.top_p if args.top_p is not None else getattr(defaults, "top_p", 0.9),
        max_new_tokens=args.max_new_tokens or getattr(defaults, "max_new_tokens", 256),
        system=args.system if args.system is not None else getattr(defaults, "system", None),
    ).check()


def prepare_chat(args):
    """The backend and settings for ``chat`` (bad paths: a clear message before any loading)."""
    from engine.chat.chat_backend import StandaloneBackend, run_chat_config
    from engine.errors import UserError
    from engine.model.loading import resolve
    from engine.run.lineage import find_run_dir

    base_name, adapter = resolve(args.target, args.base)
    run_dir = Path(args.run_dir) if args.run_dir else (find_run_dir(adapter) if adapter else None)
    chat_config = run_chat_config(run_dir)
    settings = _settings(args, chat_config)
    if args.compare and not args.prompt:
        raise UserError("--compare needs --prompt", "add --prompt TEXT (in the pane, compare is ctrl+o)")
    if args.prompt is None and not run_dir:
        name = Path(adapter).parent.name if adapter else Path(base_name).name
        run_dir = Path("logs") / (name or "chat")
    backend = StandaloneBackend(args.target, args.base, run_dir=run_dir, chat_config=chat_config)
    return backend, settings, run_dir


def chat_main(args) -> int:
    """One answer to stdout (``--prompt``). The chat pane itself is the cockpit's
    (``cockpit.chat_app``): the engine never imports the UI."""
    from engine.errors import UserError

    if args.prompt is None:
        raise UserError(
            "the chat pane is the cockpit's", "run `leviathan-cockpit chat TARGET`, or pass --prompt TEXT"
        )
    backend, settings, run_dir = prepare_chat(args)
    return _one_shot(backend, args, settings, run_dir)


def _one_shot(backend, args, settings, run_dir) -> int:
    from engine.chat.chat import BASE, Delta, Done, Failed, Request
    from engine.errors import UserError
    from engine.run.chat_log import Transcript

    backend.load()
    first = backend.default_target
    targets = [first] if not args.compare else [first, BASE if args.compare == BASE else args.compare]
    request = Request(args.prompt, targets, settings)
    result: list = []
    single = len(targets) == 1

    def sink(event) -> None:
        if isinstance(event, Delta) and single:
            sys.stdout.write(event.text)
            sys.stdout.flush()
        elif isinstance(event, Done | Failed):
            result.append(event)

    backend.run(request, sink)
    event = result[-1] if result else None
    if isinstance(event, Failed):
        if event.kind == "input":
            raise UserError(event.message, event.fix)
        print(f"leviathan-cockpit: {event.message}\n  fix: {event.fix}", file=sys.stderr)
        return 1
    assert isinstance(event, Done)
    if single:
        sys.stdout.write("\n")
    else:
        for a in event.answers:
            sys.stdout.write(f"== {a.target} ==\n{a.text}\n")
    if args.run_dir:
        Transcript(run_dir, backend.base).exchange(request, event)
    return 0
