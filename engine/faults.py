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
- ``kill@PHASE:N`` / ``term@PHASE:N``: SIGKILL (a kill -9, the OOM killer) or SIGTERM sent to this
  process inside PHASE: ``prep`` (the N-th chunk of data prepared), ``load`` (the N-th model
  load, the weights just read), ``step`` (the forward of step N), ``save`` (the save of
  checkpoint N, at its optimizer write; ``kill@save`` writes half an ``optimizer.pt`` first, as
  above), ``eval`` (the first eval batch at or after step N), ``merge`` (the N-th merged folder,
  written but not yet swapped in), ``export`` (the N-th GGUF file, converted but not yet checked
  or renamed). SIGTERM runs the process's own handler, as an operator's would.
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
PHASES = ("prep", "load", "step", "save", "eval", "merge", "export")
_SPEC = re.compile(r"^(nan|oom|enospc|kill|term)@(\w+):(\d+)(?:x(\d+))?$")
_WHERE = {"nan": ("step",), "oom": ("step",), "enospc": ("save", "log"), "kill": PHASES, "term": PHASES}
_SIGNAL = {"kill": signal.SIGKILL, "term": signal.SIGTERM}


@dataclass
class Fault:
    kind: str
    at: int
    times: int = 1
    fired: list[int] = field(default_factory=list)  # the steps it fired at
    where: str = ""

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
                "use nan@step:N, oom@step:N, enospc@save:N, enospc@log:N, kill@PHASE:N or "
                f"term@PHASE:N (PHASE: {', '.join(PHASES)}; each with an optional xK), comma-separated",
            )
        kind = m.group(1) if m.group(2) != "log" else "enospc_log"
        out.append(Fault(kind, int(m.group(3)), int(m.group(4) or 1), where=m.group(2)))
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
    _reached.clear()


def _take(kind: str, step: int, once_per_step: bool = False, where: str | None = None) -> bool:
    return any(f.take(step, once_per_step) for f in active() if f.kind == kind and where in (None, f.where))


_reached: dict[str, int] = {}  # phase -> times reached in this process (the phases without a step)


def in_phase(where: str, step: int | None = None) -> None:
    """Inside phase ``where`` (of step ``step``, else its next time reached): a ``kill@``/``term@``
    fault there sends its signal to this process, so an interruption lands inside the phase."""
    if not active():
        return
    if step is None:
        step = _reached[where] = _reached.get(where, 0) + 1
    for kind, sig in _SIGNAL.items():
        if _take(kind, step, where=where):
            os.kill(os.getpid(), sig)


def enabled() -> bool:
    return bool(active())


def on_forward(step: int) -> None:
    """Before a training forward of optimizer step ``step``."""
    in_phase("step", step)
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
    if _take("term", step, where="save"):
        os.kill(os.getpid(), signal.SIGTERM)  # its handler asks for a stop; this save goes on
    full, kill = _take("enospc", step), _take("kill", step, where="save")
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
