"""Modules' forwards swapped for the length of a ``with`` block, and put back exactly.

The engine changes how a layer computes (``engine.chat.routing``'s adapter products,
``engine.chat.base_copy``'s bf16 copy of a 4-bit base) by setting an instance ``forward``,
never by changing the module: afterwards the module's ``__dict__`` is as it was (an instance
forward that was there before, e.g. a hook's, comes back; none stays where there was none).
"""

from __future__ import annotations

import os

SWITCH = ("auto", "on", "off")


def switched_on(env: str, device) -> bool:
    """An engine speed-up's switch ``env``: ``auto`` (the default) on CUDA only, ``on`` on any
    device too, ``off`` never."""
    choice = os.environ.get(env) or "auto"
    if choice not in SWITCH:
        raise ValueError(f"{env}={choice!r}: one of {', '.join(SWITCH)}")
    return choice == "on" or (choice == "auto" and device.type == "cuda")


def swap(saved: list, module, forward) -> None:
    """Set ``module.forward``; ``saved`` remembers what to put back."""
    saved.append((module, module.__dict__.get("forward")))
    module.forward = forward


def restore(saved: list) -> None:
    """Put back every forward ``swap`` replaced, and empty ``saved``."""
    for m, old in reversed(saved):
        if old is None:
            m.__dict__.pop("forward", None)
        else:
            m.forward = old
    saved.clear()
