"""The guide's expected bands and unhealthy patterns, as rules over the run log's records.

``HealthMonitor(config.health).observe(record)`` takes the records of a run in order and
returns the alerts they raise (pure: no I/O, no clock). Rules, with the guide's advice:

- ``nan``: a loss, grad norm or eval loss that is NaN or Inf (the run log writes them as
  the strings "nan"/"inf"). Critical.
- ``initial_loss``: the first logged loss outside 2.0-3.0 ("OK if higher, will decrease").
- ``spike``: a loss above ``spike_factor`` x the median of the recent window.
- ``plateau``: the smoothed loss has not improved by ``plateau_min_delta`` for
  ``plateau_steps`` steps.
- ``overfitting``: eval loss - smoothed train loss > ``overfit_gap``.
- ``underfitting``: eval and train loss both > ``underfit_loss`` after epoch 1 (train
  loss alone when the run has no validation set).
- ``perplexity``: validation perplexity > ``perplexity_max`` (warning) or
  > ``perplexity_investigate`` (critical), from ``perplexity_after_epoch`` on.
- ``gpu_memory``: used memory near (warning) or above (critical) the 75 GB line (``GPU_LOW_STEPS``).
- ``final_loss``: the loss at the last step (mean of the last 10 logged) above 1.5 (2.0: the data?).

Each rule fires once per episode: it alerts when it turns unhealthy (or gets worse:
warning -> critical), stays quiet while it stays so, and when it is healthy again says so
(an ``alert_resolved`` record: rule, step, the value now) and re-arms. Rules about one moment
(``:once``: the first and the last loss) never resolve.

``HealthListener`` runs a monitor as a run-log listener and writes the alerts into the
same log; ``watch_run`` adds it, with the GPU sampler, to a run. The expected loss and
perplexity by epoch, for charts, are ``engine.train.bands``.
"""

from __future__ import annotations

import math
import statistics
import threading
import traceback
from collections import deque

from engine.config.config import HealthConfig

LEVELS = {"info": 0, "warning": 1, "critical": 2}
GPU_LOW_STEPS = 2  # steps GPU memory stays below the line before its alert is resolved

ADVICE = {
    "nan": "reduce the learning rate (guide: learning_rate: 1e-4 if the loss explodes) or check "
    "for bad data; resume from the last complete checkpoint",
    "initial_loss_high": "OK if higher, will decrease",
    "initial_loss_low": "check the data format (`head -5 dataset.jsonl | jq`): a low first loss can "
    "mean few trained (assistant) tokens per example",
    "spike": "reduce the learning rate or check for bad data (guide: learning_rate: 1e-4 if the "
    "loss explodes)",
    "plateau": "increase the learning rate or reduce regularization (guide: the LR should start "
    "~2e-4, warmup ramps over the first 100 steps)",
    "overfitting": "reduce epochs (num_epochs) or increase dropout (lora_dropout)",
    "underfitting": "increase model capacity (lora_r) or the learning rate",
    "perplexity": "expected < 3.0 (guide); it should keep falling as training goes on",
    "perplexity_investigate": "investigate (guide: > 4.0): check the data format and the learning "
    "rate, and compare train and eval loss",
    "gpu_memory": "reduce batch size if OOM (guide: micro_batch_size: 1, "
    "gradient_accumulation_steps: 16), or turn on gradient_checkpointing",
    "final_loss": "expected < 1.5 at the end (guide); train longer or check the learning rate",
    "final_loss_data": "check the data format (guide: if > 2.0; `head -5 dataset.jsonl | jq`)",
}


def num(value) -> float | None:
    """A record's number: floats, ints and the strings "nan"/"inf"/"-inf"; None otherwise."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _fmt(x: float) -> str:
    return f"{x:.4g}" if math.isfinite(x) else str(x)


class HealthMonitor:
    """The rules over a stream of run-log records. Not thread-safe: one caller at a time."""

    def __init__(self, config: HealthConfig | None = None) -> None:
        self.c = config or HealthConfig()
        self._fired: dict[str, str] = {}  # episode key -> level it alerted at
        self._alpha = 2.0 / (self.c.smoothing_span + 1)
        self._seen_loss = False
        self._resumed = False
        self._has_val: bool | None = None
        self._final_done = False
        self._reset_curve()

    def _reset_curve(self) -> None:
        self._window: deque[float] = deque(maxlen=self.c.spike_window)
        self.ema: float | None = None
        self._ref: float | None = None  # smoothed loss at the last improvement
        self._ref_step = 0
        self._last_step: int | None = None
        self._gpu_low_from: int | None = None  # the step GPU memory fell below the line at

    @property
    def active(self) -> dict[str, str]:
        """Rules unhealthy now (an alert was raised and they have not recovered), with level."""
        return {k.split(":")[0]: v for k, v in self._fired.items() if not k.endswith(":once")}

    def observe(self, record: dict) -> list[dict]:
        """The alerts (and resolutions, ``"resolved": True``) this record raises."""
        kind = record.get("kind")
        if kind == "step":
            return self._on_step(record)
        if kind == "eval":
            return self._on_eval(record)
        if kind == "gpu":
            return self._on_gpu(record)
        if kind == "data":
            self._has_val = bool(record.get("val_rows"))
        elif kind == "resume":
            # The steps after the checkpoint are trained again: a new stretch of curve,
            # and its first loss is not the run's initial loss.
            self._resumed = True
            self._reset_curve()
        return []

    # -- episodes -------------------------------------------------------------------------

    def _episode(self, key: str, level: str | None, out: list, **alert) -> None:
        """Alert when ``key`` turns unhealthy or worse; re-arm when ``level`` is None."""
        if level is None:
            if self._fired.pop(key, None) is not None and not key.endswith(":once"):
                out.append(self._resolved(key, alert))
            return
        before = self._fired.get(key)
        if before is not None and LEVELS[level] <= LEVELS[before]:
            return
        self._fired[key] = level
        alert = {k: v for k, v in alert.items() if v is not None and k != "value_name"}
        out.append({"rule": key.split(":")[0], "level": level, **alert})

    @staticmethod
    def _resolved(key: str, alert: dict) -> dict:
        step, value = alert.get("step"), alert.get("value")
        now = f": {alert['value_name']} now {value}" if value is not None and alert.get("value_name") else ""
        at = f" at step {step}" if step is not None else ""
        return {"rule": key.split(":")[0], "resolved": True, "step": step, "message": f"resolved{at}{now}"}

    # -- step records ---------------------------------------------------------------------

    def _on_step(self, r: dict) -> list[dict]:
        out: list[dict] = []
        step = r.get("step") if isinstance(r.get("step"), int) else None
        loss, grad = num(r.get("loss")), num(r.get("grad_norm"))
        if step is not None and self._last_step is not None and step < self._last_step:
            self._reset_curve()
        if step is not None:
            self._last_step = step

        bad = [(n, v) for n, v in (("loss", loss), ("grad norm", grad)) if v is not None and not _finite(v)]
        self._episode(
            "nan:step",
            "critical" if bad else None,
            out,
            step=step,
            message=" and ".join(f"{n} is {v}" for n, v in bad) + f" at step {step}",
            advice=ADVICE["nan"],
            value=str(bad[0][1]) if bad else (round(loss, 4) if _finite(loss) else None),
            value_name="loss",
        )
        if not _finite(loss):
            return out

        if not self._seen_loss:
            self._seen_loss = True
            if not self._resumed:
                self._initial(loss, step, out)
        self._spike(loss, step, out)
        self._smooth_and_plateau(loss, step, out)
        epoch = num(r.get("epoch"))
        if self._has_val is False and epoch is not None and epoch >= self.c.underfit_after_epoch:
            high = self.ema > self.c.underfit_loss
            self._episode(
                "underfitting:train",
                "warning" if high else None,
                out,
                step=step,
                message=f"train loss {self.ema:.3f} (smoothed) > {self.c.underfit_loss} at epoch "
                f"{epoch:.2f} (no validation set)",
                advice=ADVICE["underfitting"],
                value=round(self.ema, 4),
                value_name="smoothed train loss",
                threshold=self.c.underfit_loss,
            )
        max_steps = r.get("max_steps")
        if isinstance(max_steps, int) and max_steps > 0 and step is not None and step >= max_steps:
            self._final(step, out)
        return out

    def _initial(self, loss: float, step, out: list) -> None:
        c = self.c
        if loss > c.initial_loss_max:
            msg, advice, limit = (
                f"initial loss {loss:.3f} > {c.initial_loss_max}",
                "initial_loss_high",
                c.initial_loss_max,
            )
        elif loss < c.initial_loss_min:
            msg, advice, limit = (
                f"initial loss {loss:.3f} < {c.initial_loss_min}",
                "initial_loss_low",
                c.initial_loss_min,
            )
        else:
            return
        self._episode(
            "initial_loss:once",
            "warning",
            out,
            step=step,
            message=f"{msg} (first logged loss; guide: {c.initial_loss_min}-{c.initial_loss_max})",
            advice=ADVICE[advice],
            value=round(loss, 4),
            threshold=limit,
        )

    def _spike(self, loss: float, step, out: list) -> None:
        w = self._window
        if len(w) >= min(10, w.maxlen):
            med = statistics.median(w)
            high = med > 0 and loss > self.c.spike_factor * med and loss - med > self.c.spike_min_delta
            self._episode(
                "spike",
                "warning" if high else None,
                out,
                step=step,
                message=f"loss {loss:.3f} at step {step} is {loss / med:.2f}x the recent median {med:.3f}"
                if high
                else "",
                advice=ADVICE["spike"],
                value=round(loss, 4),
                value_name="loss",
                threshold=round(self.c.spike_factor * med, 4),
            )
        w.append(loss)

    def _smooth_and_plateau(self, loss: float, step, out: list) -> None:
        self.ema = loss if self.ema is None else self.ema + self._alpha * (loss - self.ema)
        if step is None:
            return
        c = self.c
        if self._ref is None or self.ema < self._ref - c.plateau_min_delta:
            self._ref, self._ref_step = self.ema, step
            self._episode(
                "plateau", None, out, step=step, value=round(self.ema, 4), value_name="smoothed loss"
            )
        elif step - self._ref_step >= c.plateau_steps:
            self._episode(
                "plateau",
                "warning",
                out,
                step=step,
                message=f"smoothed loss {self.ema:.3f} has not improved by {c.plateau_min_delta} in "
                f"{step - self._ref_step} steps (since step {self._ref_step}, {self._ref:.3f})",
                advice=ADVICE["plateau"],
                value=round(self.ema, 4),
                threshold=c.plateau_steps,
            )

    def _final(self, step, out: list) -> None:
        if self._final_done or not self._window:
            return
        self._final_done = True
        # The mean of the last few logged losses: an EMA would still carry the early curve
        # on a short run.
        tail = list(self._window)[-10:]
        final = sum(tail) / len(tail)
        c = self.c
        if final > c.final_loss_check_data:
            advice, limit = "final_loss_data", c.final_loss_check_data
        elif final > c.final_loss_max:
            advice, limit = "final_loss", c.final_loss_max
        else:
            return
        self._episode(
            "final_loss:once",
            "warning",
            out,
            step=step,
            message=f"final loss {final:.3f} (mean of the last {len(tail)} logged) > {limit} at the "
            f"last step ({step})",
            advice=ADVICE[advice],
            value=round(final, 4),
            threshold=limit,
        )

    # -- eval records ---------------------------------------------------------------------

    def _on_eval(self, r: dict) -> list[dict]:
        out: list[dict] = []
        c = self.c
        step = r.get("step") if isinstance(r.get("step"), int) else None
        loss = num(r.get("eval_loss"))
        if loss is None:
            return out
        self._episode(
            "nan:eval",
            None if _finite(loss) else "critical",
            out,
            step=step,
            message=f"eval loss is {loss} at step {step}",
            advice=ADVICE["nan"],
            value=str(loss) if not _finite(loss) else round(loss, 4),
            value_name="eval loss",
        )
        if not _finite(loss):
            return out
        epoch = num(r.get("epoch"))
        train = self.ema
        if train is not None:
            gap = loss - train
            self._episode(
                "overfitting",
                "warning" if gap > c.overfit_gap else None,
                out,
                step=step,
                message=f"eval loss {loss:.3f} - train loss {train:.3f} (smoothed) = {gap:.3f} > {c.overfit_gap}",
                advice=ADVICE["overfitting"],
                value=round(gap, 4),
                value_name="eval - train gap",
                threshold=c.overfit_gap,
            )
            if epoch is not None and epoch >= c.underfit_after_epoch:
                high = loss > c.underfit_loss and train > c.underfit_loss
                self._episode(
                    "underfitting",
                    "warning" if high else None,
                    out,
                    step=step,
                    message=f"eval loss {loss:.3f} and train loss {train:.3f} (smoothed; last logged "
                    f"{self._window[-1]:.3f}) both > {c.underfit_loss} at epoch {epoch:.2f}"
                    if self._window
                    else f"eval loss {loss:.3f} and train loss {train:.3f} (smoothed) both > "
                    f"{c.underfit_loss} at epoch {epoch:.2f}",
                    advice=ADVICE["underfitting"],
                    value=round(min(loss, train), 4),
                    value_name="eval loss",
                    threshold=c.underfit_loss,
                )
        ppl = num(r.get("perplexity"))
        if ppl is None:
            ppl = math.exp(loss) if loss < 50 else math.inf
        if epoch is None or epoch >= c.perplexity_after_epoch:
            level = None
            if ppl > c.perplexity_investigate:
                level, limit, advice = "critical", c.perplexity_investigate, "perplexity_investigate"
            elif ppl > c.perplexity_max:
                level, limit, advice = "warning", c.perplexity_max, "perplexity"
            self._episode(
                "perplexity",
                level,
                out,
                step=step,
                message=f"validation perplexity {_fmt(ppl)} > {limit}" if level else "",
                advice=_perplexity_advice(advice, c) if level else "",
                value=round(ppl, 4) if math.isfinite(ppl) else str(ppl),
                value_name="perplexity",
                threshold=limit if level else None,
            )
        return out

    # -- gpu records ----------------------------------------------------------------------

    def _on_gpu(self, r: dict) -> list[dict]:
        out: list[dict] = []
        if r.get("available") is False:
            return out
        c = self.c
        worst = None  # (fraction of the limit, gpu, limit_mb)
        for g in r.get("gpus") or []:
            used = num(g.get("used_mb"))
            if not _finite(used):
                continue
            limit = c.gpu_memory_max_gb * 1024
            total = num(g.get("total_mb"))
            if _finite(total) and total > 0:
                # On a card smaller than the guide's 80 GB, its own size is the line.
                limit = min(limit, total)
            frac = used / limit
            if worst is None or frac > worst[0]:
                worst = (frac, g, limit)
        if worst is None:
            return out
        frac, g, limit = worst
        level = "critical" if frac > 1 else ("warning" if frac >= c.gpu_memory_near else None)
        if level is not None:
            self._gpu_low_from = None
        elif "gpu_memory" in self._fired and not self._low_for_steps(r.get("step")):
            return out  # a dip between steps does not end the episode
        name = f"GPU {g.get('index', '?')}" + (f" ({g['name']})" if g.get("name") else "")
        what = "above" if frac > 1 else "nearing"
        self._episode(
            "gpu_memory",
            level,
            out,
            step=r.get("step"),
            message=f"{name} uses {g['used_mb'] / 1024:.1f} GiB, {what} the {limit / 1024:.1f} GiB line",
            advice=ADVICE["gpu_memory"],
            value=g["used_mb"],
            value_name="used MB",
            threshold=round(limit),
        )
        return out

    def _low_for_steps(self, step) -> bool:
        """Below the line for ``GPU_LOW_STEPS`` steps: probes or a chat free the allocator's cache
        for a while (7 GiB between 71 GiB steps, QLoRA 8B), which made the alert flap at each save."""
        step = step if isinstance(step, int) else (self._last_step or 0)
        self._gpu_low_from = step if self._gpu_low_from is None else self._gpu_low_from
        done = step - self._gpu_low_from >= GPU_LOW_STEPS
        self._gpu_low_from = None if done else self._gpu_low_from
        return done


def _perplexity_advice(which: str, c: HealthConfig) -> str:
    """The guide's advice with this config's bands (the guide's own are 3.0 and 4.0)."""
    if which == "perplexity":
        return f"expected < {c.perplexity_max} (guide: < 3.0); it should keep falling as training goes on"
    return (
        f"investigate (above {c.perplexity_investigate}; guide: > 4.0): check the data format and the "
        "learning rate, and compare train and eval loss"
    )


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
