"""Where the run stands, folded from its records: what the header says, which keys are offered.

One state at a time: ``starting`` (no ``start`` record yet), ``training``, ``paused``,
``stopping`` (a stop was asked; the trainer saves at the next step), ``ended`` (an ``end``
record: its ``status`` is completed, stopped, early_stopped, failed or error) or ``gone`` (the writer of an
attached log died without an ``end``). A start that resumes a checkpoint already at
``max_steps`` and ends without a step is a run that had finished before: it says so.
"""

from __future__ import annotations


class RunState:
    def __init__(self, read_only: bool) -> None:
        self.read_only = read_only
        self.phase = "starting"
        self.end: dict | None = None
        self.step: int | None = None
        self.max_steps: int | None = None
        self.stop_asked = False
        self.writer_alive: bool | None = None
        self._resumed_at: int | None = None
        self._steps_since_start = 0

    @property
    def ended(self) -> bool:
        return self.phase == "ended"

    @property
    def live(self) -> bool:
        """The trainer is there to act on a key (not ended, not gone)."""
        return self.phase in ("starting", "training", "paused", "stopping")

    @property
    def already_finished(self) -> bool:
        """This start found the run complete: it resumed at max_steps and trained nothing."""
        return (
            self.ended
            and self._steps_since_start == 0
            and self._resumed_at is not None
            and self.max_steps is not None
            and self._resumed_at >= self.max_steps
        )

    def observe(self, records: list[dict]) -> None:
        for r in records:
            kind = r.get("kind")
            if isinstance(r.get("step"), int):
                self.step = r["step"]
            if isinstance(r.get("max_steps"), int) and r["max_steps"] > 0:
                self.max_steps = r["max_steps"]
            if kind == "start":
                self.phase, self.end, self.stop_asked = "training", None, False
                self._resumed_at, self._steps_since_start = None, 0
            elif kind == "resume" and isinstance(r.get("from_step"), int):
                self._resumed_at = r["from_step"]
            elif kind == "step":
                self._steps_since_start += 1
                if self.phase == "starting":
                    self.phase = "training"
            elif kind == "paused" and self.phase != "stopping":
                self.phase = "paused"
            elif kind == "resumed" and self.phase == "paused":
                self.phase = "training"
            elif kind == "end":
                self.phase, self.end = "ended", r

    def stop_requested(self) -> None:
        self.stop_asked = True
        if self.live:
            self.phase = "stopping"

    def writer(self, alive: bool) -> None:
        self.writer_alive = alive
        if not alive and self.live and self.read_only:
            self.phase = "gone"

    def label(self) -> str:
        """The header's words for the state (the mode first when attached)."""
        text = self._phase_text()
        return f"attached, read-only · {text}" if self.read_only else text

    def _phase_text(self) -> str:
        at = f" at step {self.step:,}" if self.step is not None else ""
        if self.phase == "ended":
            status = str(self.end.get("status", "ended"))
            if status == "early_stopped":  # eval_loss stopped improving (early_stopping_patience)
                status = "early stopped"
            if self.already_finished:
                return f"already {status}{at}: nothing left to train"
            return f"{status}{at}"
        if self.phase == "gone":
            return f"not running (no end record){at}"
        if self.phase == "paused":
            return f"paused{at}"
        if self.phase == "stopping":
            return "stopping: saving a checkpoint at the next step"
        if self.phase == "starting":
            return "starting: loading model and data" if not self.read_only else "waiting for records"
        return "training" if not self.read_only else "running"
