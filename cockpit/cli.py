"""``leviathan-cockpit``: the command line. Imports stay lazy so ``--help`` answers at once."""

from __future__ import annotations

import argparse
import difflib
import os
import sys

from engine.cli import steps

COMMANDS = {
    "train": "the cockpit (or --headless) on a config; no config: the embedded demo",
    "attach": "the cockpit on an existing run's log, live or finished",
    "check": "validate a config and its data; stats by _category; no training",
    "preprocess": "prepare (tokenize, mask, pack) the data ahead of training, in parallel; reused by train",
    "sample": "stratified sample of a JSONL corpus, streaming",
    "chat": "talk to a checkpoint or model",
    "eval": "identity / inference / lm-eval suites on a checkpoint or model",
    "checklist": "print a run's validation checklist",
    **steps.commands(),  # merge, quantize, export, push: engine/cli/steps/, one module a step
}


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--resume",
        default="auto",
        metavar="auto|never|PATH",
        help="auto: newest complete checkpoint (default); never: start fresh; or a checkpoint folder",
    )
    p.add_argument("--max-steps", type=int, metavar="N", help="stop after N optimizer steps")
    p.add_argument("--run-name", metavar="NAME", help="run folder name under the logs dir")
    p.add_argument(
        "--logs-dir", metavar="DIR", help="where run folders go (default: config's logs_dir, ./logs)"
    )
    p.add_argument(
        "--force", action="store_true", help="with --resume never: train over an output_dir with checkpoints"
    )


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="leviathan-cockpit",
        description="A terminal cockpit for LoRA/QLoRA fine-tuning of chat LLMs. "
        "With no command: the cockpit on the embedded demo. `leviathan-cockpit CONFIG` = `train CONFIG`.",
    )
    sub = top.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text)
    p = sub.choices["train"]
    p.add_argument("config", nargs="?", help="Axolotl-style YAML (default: the embedded demo)")
    p.add_argument("--headless", action="store_true", help="no UI; progress and alerts on stderr")
    _common(p)
    p.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="training processes (one per GPU; all hosts together) through `accelerate launch` "
        "(default: the config's distributed.num_processes, else 1)",
    )
    p.add_argument("--machine-rank", type=int, metavar="R", help="this host's rank in a multi-host run")
    p.add_argument(
        "--override-gate",
        metavar="REASON",
        help="start although the config's gate (the 10%% run's checks) fails; the reason is recorded",
    )
    p.add_argument(
        "--allow-world-size-change",
        action="store_true",
        help="resume a checkpoint written by a different number of processes",
    )
    p = sub.choices["attach"]
    p.add_argument(
        "run_dir",
        nargs="+",
        help="a run folder (logs/<run-name>) or its events.jsonl; several: the first on the dashboard, "
        "all of them side by side in the Compare tab",
    )
    p = sub.choices["check"]
    p.add_argument("config")
    p.add_argument(
        "--tokens", action="store_true", help="also count tokens per _category with the model's tokenizer"
    )
    p.add_argument("--no-tokenizer", action="store_true", help="skip token lengths (no model needed)")
    p.add_argument(
        "--show-masks",
        type=int,
        metavar="N",
        help="show the first N rows of each dataset as the model sees them, trained tokens highlighted",
    )
    p.add_argument("--json", action="store_true", help="with --show-masks: one JSON object a line per row")
    p.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        metavar="N",
        help="processes that tokenize (default: the cores)",
    )
    p = sub.choices["preprocess"]
    p.add_argument("config")
    p.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="processes that prepare (default: the config's dataset_processes, else the cores)",
    )
    from engine.cli.cli_extra import register

    register(sub)
    return top


def not_a_command(word: str):
    """A first word that is neither a command nor a config file: the UserError to say so, else None.

    ``leviathan-cockpit CONFIG`` means ``train CONFIG``, so a mistyped command would otherwise
    be read as a config path ("no such config file") or its arguments as unknown flags.
    """
    from pathlib import Path

    from engine.errors import UserError

    if word in COMMANDS or word.startswith("-") or Path(word).exists():
        return None
    close = difflib.get_close_matches(word, COMMANDS, n=1, cutoff=0.6)
    if close:
        return UserError(f"`{word}` is not a command", f"did you mean `leviathan-cockpit {close[0]}`?")
    if word.endswith((".yaml", ".yml")):
        return None  # a config path: loading it says what is wrong with it
    return UserError(
        f"`{word}` is not a command, and no file of that name exists",
        f"commands: {', '.join(COMMANDS)} (`leviathan-cockpit --help`); or give a config file (YAML)",
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and argv[0] not in ("-h", "--help"):
        wrong = not_a_command(argv[0])
        if wrong is not None:
            print(f"leviathan-cockpit: {wrong}", file=sys.stderr)
            return 2
        argv.insert(0, "train")  # `leviathan-cockpit CONFIG`, `leviathan-cockpit --max-steps N`
    if not argv:
        argv = ["train"]
    args = parser().parse_args(argv)
    from engine.errors import UserError

    try:
        return int(_dispatch(args) or 0)
    except UserError as e:
        print(f"leviathan-cockpit: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _dispatch(args) -> int:
    if args.command == "train" and args.override_gate is not None:
        from engine.evaluate.gate import OVERRIDE_ENV  # the trainer processes inherit it

        os.environ[OVERRIDE_ENV] = args.override_gate
        try:
            return _train(args)
        finally:
            os.environ.pop(OVERRIDE_ENV, None)
    if args.command == "train":
        return _train(args)
    if args.command == "attach":
        from cockpit.launch import attach

        return attach(args)
    if args.command == "chat" and args.prompt is None:
        from cockpit.chat_app import chat_pane_main  # the pane is the cockpit's; --prompt the engine's

        return chat_pane_main(args)
    if args.command == "check":
        from engine.cli.headless import check_command

        return check_command(args)
    if args.command == "preprocess":
        from engine.cli.prepare_cli import preprocess_command

        return preprocess_command(args)
    return args.handler(args)


def _train(args) -> int:
    if args.headless:
        from engine.cli.headless import train_headless

        return train_headless(args)
    from cockpit.launch import train_in_cockpit

    return train_in_cockpit(args, args.nproc)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
