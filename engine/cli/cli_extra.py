"""Sub-commands beyond train/attach/check: each owns a module with ``add_args`` and ``main``;
the post-training steps are the registry ``engine.cli.steps``.

Registered by name so ``--help`` lists them without importing anything heavy.
"""

from __future__ import annotations

import argparse
import importlib

# command -> module holding `add_args(parser)` and `main(args) -> int`
MODULES = {
    "sample": "engine.cli.sample_cli",
    "chat": "engine.cli.chat_cli",
    "eval": "engine.cli.eval_cli",
    "checklist": "engine.cli.checklist_cli",
}


def register(sub: argparse._SubParsersAction) -> None:
    from engine.cli import steps

    steps.add_commands(sub)
    for name, module in MODULES.items():
        p = sub.choices[name]
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            p.set_defaults(handler=_missing(name))
            continue
        getattr(mod, f"add_{name}_args")(p)
        p.set_defaults(handler=getattr(mod, f"{name}_main"))


def _missing(name: str):
    def handler(args) -> int:
        from engine.errors import UserError

        raise UserError(f"`{name}` is not available in this build", "see README.md for the commands that are")

    return handler
