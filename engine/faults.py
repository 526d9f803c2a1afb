"""Fault injection for tests and drills: real faults at the real places, chosen by env var.

``LEVIATHAN_FAULT`` holds comma-separated faults ``KIND@WHERE:N[xK]``:

- ``nan@step:N[xK]``: the training loss of optimizer step N (1-based, as in the run log) is
  multiplied by NaN (in its first micro-batch), for K steps from N on (default 1). The NaN
  flows through backward like a real one.
- ``oom@step:N[xK]``: ``torch.OutOfMemoryError`` raised in the forward of step N, the first
  K times a forward runs at or after it.
- ``enospc@save:N[xK]``: the save of checkpoint N (or the first save after it) writes half an
  ``optimizer.pt`` and fails with ``OSError(ENOSPC)`` at that write, K times.
- ``kill@save:N``: the save of checkpoint N (or the first save after it) writes half an
  ``optimizer.pt`` and the process kills itself with SIGKILL there (a kill -9 mid-save).
- ``enospc@log:N[xK]``: from the run log's first write of a record at or after step N, its next
  K writes each write half their data and fail with ``OSError(ENOSPC)`` (the logs disk is full,
  then freed).

Counts are per process: a fault that fired is used up, so a rolled-back or retried step runs
clean (a transient fault). Without the variable every hook is one ``None`` check.
"""

from __future__ import annotations

import errno
import os
import re
import signal
from dataclasses import dataclass, field

from engine.errors import UserError

ENV = "LEVIATHAN_FAULT"
_SPEC = re.compile(r"^(nan|oom|enospc|kill)@(step|save|log):(\d+)(?:x(\d+))?$")
_WHERE = {"nan": ("step",), "oom": ("step",), "enospc": ("save", "log"), "kill": ("save",)}


@dataclass
class Fault:
    kind: str
    at: int
    times: int = 1
    fired: list[int] = field(default_factory=list)  # the steps it fired at

    def take(self, step: int, once_per_step: bool = False) -> bool:
        if step < self.at or len(self.fired) >= self.times:
            return False
        if once_per_step and step in self.fired:
            return False
        self.fired.append(step)
        return True


_faults: list[Fault] | None = None


def parse(text: str) -> list[Fault]:
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        m = _SPEC.match(part)
        if not m or m.group(2) not in _WHERE[m.group(1)]:
            raise UserError(
                f"{ENV}: bad fault {part!r}",
                "use nan@step:N, oom@step:N, enospc@save:N, enospc@log:N or kill@save:N (each with an "
                "optional xK), comma-separated",
            )
        kind = m.group(1) if m.group(2) != "log" else "enospc_log"
        out.append(Fault(kind, int(m.group(3)), int(m.group(4) or 1)))
    return out


def active() -> list[Fault]:
    global _faults
    if _faults is None:
        _faults = parse(os.environ.get(ENV, ""))
    return _faults


def reset(text: str | None = None) -> None:
    """Re-read the faults (tests in one process); ``text`` instead of the env var."""
    global _faults
    _faults = parse(text) if text is not None else None


def _take(kind: str, step: int, once_per_step: bool = False) -> bool:
    return any(f.take(step, once_per_step) for f in active() if f.kind == kind)


def enabled() -> bool:
    return bool(active())


def on_forward(step: int) -> None:
    """Before a training forward of optimizer step ``step``."""
    if _take("oom", step):
        import torch

        raise torch.OutOfMemoryError(
            f"CUDA out of memory at step {step} (injected by {ENV}). Tried to allocate 2.00 GiB"
        )


def on_loss(loss, step: int):
    """The training loss of step ``step``, NaN when a ``nan`` fault covers it."""
    if _take("nan", step, once_per_step=True):
        return loss * float("nan")
    return loss


def on_save_write(folder: str, step: int) -> None:
    """At the optimizer's write in a save: half a file, then the disk is full (or a kill -9)."""
    full, kill = _take("enospc", step), _take("kill", step)
    if not (full or kill):
        return
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "optimizer.pt"), "wb") as f:
        f.write(b"PK\x03\x04" + b"\0" * 4096)  # the start of a zip that never ends
    if kill:
        os.kill(os.getpid(), signal.SIGKILL)
    raise OSError(errno.ENOSPC, f"No space left on device (injected by {ENV})", folder)


def log_write_fails(step) -> bool:
    """Whether the run log's write of a record of ``step`` fails as on a full disk."""
    for f in active():
        # Once the disk is full every write fails, with or without a step, until it is freed.
        started = f.fired or (isinstance(step, int) and step >= f.at)
        if f.kind == "enospc_log" and started and len(f.fired) < f.times:
            f.fired.append(step)
            return True
    return False
