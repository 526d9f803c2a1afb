"""The one command source of a training run, polled by the one callback at each step boundary.

Commands reach a trainer two ways, and both land in the same ``Controls`` flags: in-memory calls
(a signal handler, the process's own code) and lines appended to the run's ``control.jsonl``
(the cockpit's keys, ``echo ... >> control.jsonl`` from a script; protocol:
``engine.run.control_file``). Rank 0 reads the file; with several processes one ``all_reduce``
of [stop, pause, save, eval] then gives every rank the same flags (pause is rank 0's alone, so a
resume there resumes all). A single process does the same minus the collective: one path for
the cockpit's job, ``train --headless`` and every rank under ``accelerate launch``.

``poll`` returns the flags every rank agreed on; callers decide from those (not from the live
flags, which a signal may change on one rank between two polls).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass

from engine.run.control import Controls
from engine.run.control_file import CONTROL_FROM_START_ENV, ControlFile, control_path
from engine.train import dist

PAUSE_POLL_S = 0.25


@dataclass(frozen=True)
class Agreed:
    """The flags as every rank sees them after a poll."""

    stop: bool = False
    pause: bool = False
    save: bool = False
    eval: bool = False


class CommandSource:
    """``Controls`` fed from the control file (rank 0) and agreed between ranks."""

    def __init__(self, controls: Controls, log, control_file: ControlFile | None) -> None:
        self.controls = controls
        self.log = log
        self.file = control_file
        self._paused = False  # the last agreed pause state: the same on every rank

    def read_file(self) -> list[str]:
        """New commands from the control file onto the flags (rank 0; no collective)."""
        if self.file is None:
            return []
        return [cmd["command"] for cmd in self.file.poll(self.controls)]

    def poll(self, step: int) -> Agreed:
        """Read, agree, record: called by every rank at the same points (a collective)."""
        c = self.controls
        commands = self.read_file()
        agreed = _agree(c)
        changed = agreed.stop or agreed.save or agreed.eval or agreed.pause != self._paused
        self._paused = agreed.pause
        if dist.initialized() and changed:
            # Which step each rank acts on: the same one, or the run log says otherwise.
            self.log.emit(
                "control",
                step=step,
                commands=commands or None,
                flags={"stop": agreed.stop, "pause": agreed.pause, "save": agreed.save, "eval": agreed.eval},
                rank_steps=dist.gather(step),
            )
        elif commands:
            self.log.emit("control", step=step, commands=commands)
        return agreed

    def wait_paused(self, step: int, between: Callable[[], object]) -> Agreed:
        """While the agreed state is paused: poll every ``PAUSE_POLL_S`` (chat jobs answered in
        ``between``); returns at a resume, a stop, or a save or eval asked meanwhile (the
        trainer does those at once and pauses again)."""
        c = self.controls
        while True:
            c.wait_for_wake(PAUSE_POLL_S)
            between()
            agreed = self.poll(step)
            if agreed.stop or not agreed.pause or agreed.save or agreed.eval:
                return agreed


def _agree(c: Controls) -> Agreed:
    local = Agreed(c.stop.is_set(), c.pause.is_set(), c.save_now.is_set(), c.eval_now.is_set())
    if not dist.initialized():
        return local
    import torch
    import torch.distributed as td

    flags = torch.tensor(
        [local.stop, local.pause if dist.is_main() else False, local.save, local.eval],
        dtype=torch.int32,
        device=dist.device(),
    )
    td.all_reduce(flags, op=td.ReduceOp.MAX)
    agreed = Agreed(*(bool(x) for x in flags.tolist()))
    if agreed.stop and not c.stop.is_set():
        c.request_stop("another rank")
    if agreed.pause != c.pause.is_set():
        c.request_pause() if agreed.pause else c.request_resume()
    if agreed.save:
        c.save_now.set()
    if agreed.eval:
        c.eval_now.set()
    return agreed


def open_source(controls: Controls, log, run_dir, from_start: bool = False) -> CommandSource:
    """The run's command source: rank 0 reads ``run_dir``'s control file from now on (from its
    start when it was emptied for this job: ``from_start``, or the launcher's environment);
    chat commands on one process only."""
    if not dist.is_main():
        return CommandSource(controls, log, None)
    from_start = from_start or os.environ.get(CONTROL_FROM_START_ENV) == "1"
    return CommandSource(controls, log, ControlFile(control_path(run_dir), from_start, _chat_job(run_dir)))


def _chat_job(run_dir):
    """Chat on the live weights through the control file: one process only (rank 0 alone does
    not hold the whole model when there are several)."""
    if dist.world_size() > 1:
        return None
    from engine.chat.chat_bridge import job_from_command

    return functools.partial(job_from_command, run_dir)
