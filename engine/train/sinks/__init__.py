"""Metric sinks: every place a run's records go besides the cockpit.

A sink is a run-log listener with a ``close``: the trainer hands it each record (the dict that
``events.jsonl`` gets, after the run log wrote it) on the emitting thread, on rank 0 only. It
must not block the step: a sink that talks to a network or a slow disk queues the record and
works in a thread of its own. A sink that fails says so with an ``alert`` record through the
run log it was given and keeps the run going; it never raises into the trainer.

Adding one is one file in this package: a module that calls ``register`` at import time with a
factory. The factory gets the resolved run config and the run folder and returns a sink, or
None when the config does not ask for it. ``open_sinks`` imports every module of the package,
so nothing else needs to be told.
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol


class Sink(Protocol):
    def __call__(self, record: dict) -> None: ...

    def close(self) -> None: ...


# factory(config, run_dir, log) -> Sink | None; ``log`` is the RunLog (for the sink's own alerts)
SinkFactory = Callable[[Any, Path, Any], "Sink | None"]

_FACTORIES: dict[str, SinkFactory] = {}


def register(name: str) -> Callable[[SinkFactory], SinkFactory]:
    def add(factory: SinkFactory) -> SinkFactory:
        _FACTORIES[name] = factory
        return factory

    return add


def _load_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


def registered() -> list[str]:
    _load_all()
    return sorted(_FACTORIES)


def open_sinks(config, run_dir: Path, log) -> list[Sink]:
    """The sinks this config asks for, opened; the caller puts them first among the log's listeners (a sink sees a record before the alerts it raises)."""
    _load_all()
    sinks = []
    for name in sorted(_FACTORIES):
        sink = _FACTORIES[name](config, Path(run_dir), log)
        if sink is not None:
            sinks.append(sink)
    return sinks


def close_sinks(sinks: list[Sink]) -> None:
    """Close each sink; one that fails to close does not keep the others open."""
    for sink in sinks:
        with contextlib.suppress(Exception):  # a sink's failure never ends the run
            sink.close()
