"""The guide's expected bands and unhealthy patterns, as rules over the run log's records.

``HealthMonitor(config.health).observe(record)`` takes the records of a run in order and
returns the alerts they raise (pure: no I/O, no clock). The rules are the modules of
``engine.train.rules``, one a rule, with the guide's advice: ``nan``, ``initial_loss``,
``spike``, ``plateau``, ``forgetting``, ``overfitting``, ``underfitting``, ``perplexity``, ``gpu_memory``,
``final_loss`` (each module's docstring says what it watches and which ``health:`` keys tune it).

Each rule fires once per episode: it alerts when it turns unhealthy (or gets worse:
warning -> critical), stays quiet while it stays so, and when it is healthy again says so
(an ``alert_resolved`` record: rule, step, the value now) and re-arms. Rules about one moment
(``:once``: the first and the last loss) never resolve.

``HealthListener`` runs a monitor as a run-log listener and writes the alerts into the
same log; ``watch_run`` adds it, with the GPU sampler, to a run. The expected loss and
perplexity by epoch, for charts, are ``engine.train.bands``.
"""

from __future__ import annotations

import threading
import traceback

from engine.config.config import HealthConfig
from engine.train.rules import Curve, Verdict, all_advice, finite, num, rules, step_of

__all__ = ["ADVICE", "HealthListener", "HealthMonitor", "num", "watch_run"]

LEVELS = {"info": 0, "warning": 1, "critical": 2}

ADVICE = all_advice()  # advice key -> the guide's advice, from every rule


class HealthMonitor:
    """The rules over a stream of run-log records. Not thread-safe: one caller at a time."""

    def __init__(self, config: HealthConfig | None = None) -> None:
        self.c = config or HealthConfig()
        self._fired: dict[str, str] = {}  # episode key -> level it alerted at
        self.curve = Curve(self.c)
        self.rules = rules(self.c)

    @property
    def active(self) -> dict[str, str]:
        """Rules unhealthy now (an alert was raised and they have not recovered), with level."""
        return {k.split(":")[0]: v for k, v in self._fired.items() if not k.endswith(":once")}

    def observe(self, record: dict) -> list[dict]:
        """The alerts (and resolutions, ``"resolved": True``) this record raises."""
        kind = record.get("kind")
        self._follow_curve(record)
        out: list[dict] = []
        for rule in self.rules:
            if kind in rule.kinds:
                for v in rule.check(record, self.curve):
                    self._episode(v, out)
        if self.curve.loss is not None:
            self.curve.window.append(self.curve.loss)
        return out

    def _follow_curve(self, record: dict) -> None:
        curve, kind = self.curve, record.get("kind")
        curve.loss = None
        if kind == "resume":
            # The steps after the checkpoint are trained again: a new stretch of curve, and
            # its first loss is not the run's initial loss.
            self._restart()
        if kind != "step":
            return
        step = step_of(record)
        if step is not None and curve.last_step is not None and step < curve.last_step:
            self._restart()
        if step is not None:
            curve.last_step = step
        loss = num(record.get("loss"))
        if finite(loss):
            curve.smooth(loss)

    def _restart(self) -> None:
        self.curve.restart()
        for rule in self.rules:
            rule.restart()

    def _episode(self, v: Verdict, out: list) -> None:
        """Alert when ``v.key`` turns unhealthy or worse; re-arm when its level is None."""
        key, level, alert = v
        if level is None:
            if self._fired.pop(key, None) is not None and not key.endswith(":once"):
                out.append(self._resolved(key, alert))
            return
        before = self._fired.get(key)
        if before is not None and LEVELS[level] <= LEVELS[before]:
            return
        self._fired[key] = level
        alert = {k: val for k, val in alert.items() if val is not None and k != "value_name"}
        out.append({"rule": key.split(":")[0], "level": level, **alert})

    @staticmethod
    def _resolved(key: str, alert: dict) -> dict:
        step, value = alert.get("step"), alert.get("value")
        now = f": {alert['value_name']} now {value}" if value is not None and alert.get("value_name") else ""
        at = f" at step {step}" if step is not None else ""
        return {"rule": key.split(":")[0], "resolved": True, "step": step, "message": f"resolved{at}{now}"}


class HealthListener:
    """Runs a ``HealthMonitor`` on a run log's records and writes its alerts into the log.

    Cheap (it runs on the training thread and the GPU sampler's), ignores ``alert``
    records (its own included), and never lets a bug in a rule stop a run: it writes one
    ``note`` and goes quiet.
    """

    def __init__(self, log, config: HealthConfig | None = None) -> None:
        self.log = log
        self.monitor = HealthMonitor(config)
        self._lock = threading.Lock()
        self._broken = False

    def __call__(self, record: dict) -> None:
        if self._broken or record.get("kind") in ("alert", "note"):
            return
        try:
            with self._lock:
                alerts = self.monitor.observe(record)
        except Exception as e:
            self._broken = True
            self.log.emit(
                "note",
                message=f"health rules stopped after an internal error: {type(e).__name__}: {e}",
                traceback=traceback.format_exc()[-2000:],
            )
            return
        for a in alerts:
            if a.pop("resolved", False):
                self.log.emit("alert_resolved", **a)
            else:
                self.log.emit("alert", **a)


class RunWatch:
    """What ``watch_run`` attached to a run: stop it when the run ends."""

    def __init__(self, sampler, health: HealthListener | None) -> None:
        self.sampler = sampler
        self.health = health

    def stop(self) -> None:
        self.sampler.stop()


def watch_run(log, config: HealthConfig) -> RunWatch:
    """Health alerts and GPU samples for a run: listeners on ``log`` plus the sampler thread.

    They go after the caller's listeners, so a reader sees each record before the alerts
    it raised.
    """
    from engine.model.gpu import GpuSampler

    sampler = GpuSampler(log, every_s=config.gpu_sample_s)
    log.listeners.append(sampler)
    health = None
    if config.enabled:
        health = HealthListener(log, config)
        log.listeners.append(health)
    sampler.start()
    return RunWatch(sampler, health)
