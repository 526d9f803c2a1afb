"""Where the run stands, folded from its records: what the header says, which keys are offered.

One state at a time: ``starting`` (no ``start`` record yet), ``training``, ``paused``,
``stopping`` (a stop was asked; the trainer saves at the next step), ``ended`` (an ``end``
record: its ``status`` is completed, stopped, early_stopped, failed or error) or ``gone`` (the writer of an
attached log died without an ``end``). Over a live one, ``stalled_s`` says how long the trainer
has given no sign of life (no record, no heartbeat: engine.run.heartbeat) once that is too long. A start that resumes a checkpoint already at
``max_steps`` and ends without a step is a run that had finished before: it says so. While a
save's probes run (``probing`` records, between two steps) the header says which suite, how far,
and the time left, instead of "training".
"""

from __future__ import annotations

from engine.evaluate.probes import probing_line


class RunState:
    def __init__(self, read_only: bool) -> None:
        self.read_only = read_only
        self.phase = "starting"
        self.end: dict | None = None
        self.step: int | None = None
        self.max_steps: int | None = None
        self.stop_asked = False
        self.asked: str | None = None  # "pause" or "resume": asked of the trainer, its record not seen yet
        self.saved_step: int | None = None  # the step of the last `save` record
        self.writer_alive: bool | None = None
        self.stalled_s: float | None = None  # no record or heartbeat for this long (None: alive)
        self.loading = False  # an attached log is still being read: its end record may be to come
        self.log_damaged = False  # a run_log_damaged alert (engine.run.seal): its end may be lost
        self.probing: dict | None = None  # the last `probing` record while the save's probes run
        self._cut: tuple[str, int] | None = None  # (stop|pause, step): probes cut, acting at that step
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
    def paused(self) -> bool:
        """Paused, or asked to pause and not yet there: what `p` does next is resume."""
        if self.asked is not None:
            return self.asked == "pause"
        return self.phase == "paused"

    @property
    def paused_now(self) -> bool:
        """The trainer is holding at a step boundary: a save or an eval asked now runs at once."""
        return self.phase == "paused" and not self.stop_asked

    def offers(self, action: str, can_eval: bool) -> bool | None:
        """Whether a key is offered: True, False (not shown) or None (shown, greyed)."""
        if self.read_only or not self.live:
            return False  # attached read-only, or the run has ended: not offered at all
        if self.stop_asked:
            return None  # the run is stopping
        if action == "pause":
            return not self.paused  # else offered as Resume
        if action == "resume":
            return self.paused
        if action == "evaluate" and not can_eval:
            return None
        return True

    def pause_requested(self) -> None:
        self.asked = "pause"

    def resume_requested(self) -> None:
        self.asked = "resume"

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
            # Probes run at a save, between two steps: the suite's record, a step, a pause or the
            # end means they are over (or cut); another suite starts with its own `probing`.
            if kind == "probing":
                self.probing = r
            elif kind in ("probe", "step", "paused", "start", "end"):
                self.probing = None
            # A stop or pause that cut the probes acts at that same step (no step, no second save).
            if kind == "probe" and r.get("cut") in ("stop", "pause") and isinstance(r.get("step"), int):
                self._cut = (r["cut"], r["step"])
            elif kind in ("step", "paused", "resumed", "start", "end"):
                self._cut = None
            if isinstance(r.get("step"), int):
                self.step = r["step"]
            if isinstance(r.get("max_steps"), int) and r["max_steps"] > 0:
                self.max_steps = r["max_steps"]
            if kind == "alert" and r.get("rule") == "run_log_damaged":
                self.log_damaged = True
            if kind == "start":
                self.phase, self.end, self.stop_asked, self.asked = "training", None, False, None
                self._resumed_at, self._steps_since_start = None, 0
            elif kind == "resume" and isinstance(r.get("from_step"), int):
                self._resumed_at = r["from_step"]
            elif kind == "step":
                self._steps_since_start += 1
                if self.phase == "starting":
                    self.phase = "training"
            elif kind == "paused" and self.phase != "stopping":
                self.phase = "paused"
                self.asked = None if self.asked == "pause" else self.asked
            elif kind == "resumed" and self.phase == "paused":
                self.phase = "training"
                self.asked = None if self.asked == "resume" else self.asked
            elif kind == "save" and isinstance(r.get("step"), int):
                self.saved_step = r["step"]
            elif kind == "end":
                self.phase, self.end, self.asked = "ended", r, None

    def stop_requested(self) -> None:
        self.stop_asked = True
        if self.live:
            self.phase = "stopping"

    def writer(self, alive: bool) -> None:
        self.writer_alive = alive
        if not alive and self.live and self.read_only:
            self.phase = "gone"

    def heartbeat(self, age: float | None, stall_after: float) -> bool:
        """The trainer's last sign of life was ``age`` s ago; True when the state changed."""
        was = self.stalled_s is not None
        stalled = age is not None and age > stall_after and self.phase in ("training", "paused", "stopping")
        self.stalled_s = round(age) if stalled else None
        return stalled or was

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
            why = "no end record: the run log is damaged" if self.log_damaged else "no end record"
            return f"loading the run log{at}…" if self.loading else f"not running ({why}){at}"
        if self.stalled_s is not None:
            return f"stalled{at}: no record or heartbeat for {_age(self.stalled_s)} (stopped or hung?)"
        if self.phase == "paused":
            return f"paused{at} · resuming" if self.asked == "resume" else f"paused{at}"
        if self.phase == "stopping":
            if self.probing is not None:  # the engine ends on the checkpoint the probes run on
                return f"stopping: cutting the probes short, ending on the checkpoint of step {self.probing.get('step', '?')}"
            if self._cut is not None and self._cut[0] == "stop":
                return f"stopping: ending on the checkpoint of step {self._cut[1]:,}"
            return "stopping: saving a checkpoint at the next step"
        if self.phase == "starting":
            return "starting: loading model and data" if not self.read_only else "waiting for records"
        if self.probing is not None:  # training waits for the probes; p, s and q cut them short
            line = probing_line(self.probing)
            return f"{line} · pausing: cutting the probes short" if self.asked == "pause" else line
        if self.asked == "pause":
            if self._cut is not None and self._cut[0] == "pause":
                return f"pausing at step {self._cut[1]:,}"
            return "training · pausing at the next step"
        return "training" if not self.read_only else "running"


def _age(seconds: float) -> str:
    s = int(seconds)
    return f"{s} s" if s < 120 else f"{s // 60} min" if s < 7200 else f"{s // 3600} h {s % 3600 // 60} min"
