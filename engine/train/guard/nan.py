"""NaN/Inf: a non-finite optimizer step is skipped; a streak of them rolls back or stops.

At the end of each optimizer step (after clipping, before ``optimizer.step``) the step's summed
loss and the gradient norm are checked. With torch's fused Adam/AdamW (the default optimizer)
the check never stops the host: the verdict is handed to the optimizer as its ``found_inf``
(the flag a mixed-precision scaler hands it), and the fused kernel leaves every weight, moment
and step count as they were when it is set. The guard reads the verdict later, with the step's
record (``settle``, or a step on through ``engine.train.step_lag``). Other optimizers are
checked with one host sync, and a non-finite step's gradients dropped (set to None) before the
update. Either way the step still counts: ``global_step`` and the LR schedule move on and its
batch is consumed, as when a scaler skips a step. Its step record shows the NaN loss; the first
skip of a streak raises an alert ``nan``. After ``nan_patience`` in a row the run rolls back to
the newest complete checkpoint saved before the streak, with the learning rate times
``nan_lr_scale`` (kept in the run state), or stops (``diverged``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from engine.run import checkpoints

NAN_ADVICE = (
    "lower learning_rate (guide: 1e-4 if the loss explodes) or check the data around these steps; "
    "the run log's `skip` records list them"
)


class NanGuard:
    def __init__(self, guard) -> None:
        self.g = guard
        self.reset()

    def reset(self) -> None:
        self.streak: list[int] = []  # the steps of the current run of non-finite ones
        self.poisoned = False  # Trainer's running loss sum holds a NaN
        self.pending: list[tuple] = []  # (step, finite?, loss sum, grad norm), device tensors

    def check_step(self, trainer, model, grad_norm, loss) -> None:
        """After clipping, before ``optimizer.step``: skip the update if anything is not finite."""
        norm = grad_norm if torch.is_tensor(grad_norm) else None
        ok = torch.isfinite(norm) if norm is not None else None
        # Several processes: decide on the (all-reduced, identical) grad norm alone, so that every
        # rank skips the same steps; a local loss could differ between them.
        if loss is not None and trainer.accelerator.num_processes == 1:
            fin = torch.isfinite(loss).all()
            ok = fin if ok is None else ok & fin.to(ok.device)
        step = trainer.state.global_step + 1
        skip_on_device = _found_inf_taker(trainer)
        if skip_on_device is not None:
            skip_on_device.found_inf = None  # set for this step only (a stale one would skip the next)
            if ok is not None:
                skip_on_device.found_inf = (~ok).to(torch.float32)
                summed = loss.float().sum() if loss is not None else None
                self.pending.append((step, ok, summed, norm))
                return
        finite = bool(ok) if ok is not None else True  # the guard's one host sync per optimizer step
        if finite and grad_norm is not None and norm is None:
            finite = math.isfinite(float(grad_norm))
        deepspeed = getattr(trainer, "is_deepspeed_enabled", False)
        if not finite and not deepspeed:  # DeepSpeed keeps its own gradient buffers and steps regardless
            model.zero_grad(set_to_none=True)  # no gradients: the optimizer updates nothing
        summed = loss.float().sum() if loss is not None and not finite else None
        self.settle(trainer, [(step, finite, summed, grad_norm)])

    def take_pending(self) -> list[tuple]:
        """The verdicts the optimizer already acted on, for the caller to read and hand back."""
        pending, self.pending = self.pending, []
        return pending

    def settle(self, trainer, verdicts: list[tuple] | None = None) -> None:
        """Read the verdicts the optimizer acted on (a host sync; none for ``verdicts`` already
        read, as ``take_pending`` handed them out, floats for tensors, or decided on the host) and
        keep the books on them."""
        for step, ok, loss, norm in self.take_pending() if verdicts is None else verdicts:
            finite = bool(ok)
            loss_v = float(loss) if loss is not None and not finite else None
            norm_v = float(norm) if norm is not None and not finite else None
            self.verdict(trainer, step, finite, loss_v, norm_v)

    def verdict(self, trainer, step: int, finite: bool, loss_v, norm_v) -> None:
        """Step ``step``'s update was made (finite) or skipped: the streak, its alert, its end."""
        if finite:
            self.streak = []
            return
        deepspeed = getattr(trainer, "is_deepspeed_enabled", False)
        self.poisoned = True
        self.streak.append(step)
        self.g.log.emit("skip", step=step, loss=loss_v, grad_norm=norm_v, streak=len(self.streak))
        if len(self.streak) == 1:
            self._first_alert(step, loss_v, norm_v, deepspeed)
        if len(self.streak) >= self.g.c.nan_patience:
            self._act(trainer, step)

    def _first_alert(self, step: int, loss_v, norm_v, deepspeed: bool) -> None:
        c = self.g.c
        then = (
            f"rolls back to the last good checkpoint with the learning rate x{c.nan_lr_scale:g}"
            if c.nan_policy == "rollback"
            else "stops"
        )
        self.g.alert(
            "nan",
            "critical",
            step,
            message=f"step {step}: loss {_v(loss_v)}, grad norm {_v(norm_v)}: "
            + (
                "DeepSpeed applies its own update (not skipped)"
                if deepspeed
                else "the optimizer step was skipped (no update)"
            ),
            advice=f"nothing to do yet; after {c.nan_patience} in a row the run {then}",
        )

    def _act(self, trainer, step: int) -> None:
        """``nan_patience`` non-finite steps in a row: roll back (while allowed) or stop."""
        g, c = self.g, self.g.c
        first = self.streak[0]
        what = f"{len(self.streak)} non-finite steps in a row ({first}-{step})"
        if c.nan_policy == "rollback" and g.state.rollbacks < c.nan_max_rollbacks:
            good = [ck for ck in checkpoints.scan(g.output_dir)[0] if ck.step < first]
            if good:
                self._roll_back(trainer, step, what, good[-1])
                return
            why = "no complete checkpoint from before them"
        elif c.nan_policy == "rollback":
            why = f"{c.nan_max_rollbacks} rollback(s) already made"
        else:
            why = "guard.nan_policy is stop"
        g.status = "diverged"
        g.alert(
            "nan_stop",
            "critical",
            step,
            message=f"{what}: the run stops ({why})",
            advice=NAN_ADVICE,
        )
        g.halt(trainer)

    def _roll_back(self, trainer, step: int, what: str, target: checkpoints.Checkpoint) -> None:
        g, c = self.g, self.g.c
        old = g.state.lr_scale
        g.state.rollbacks += 1
        g.state.lr_scale = old * c.nan_lr_scale
        g.state.record(step, "nan_rollback", what, to_step=target.step, lr_scale=[old, g.state.lr_scale])
        g.save_state()
        lr = g.config.learning_rate * g.state.lr_scale
        g.alert(
            "nan_rollback",
            "critical",
            step,
            message=f"{what}: rolling back to checkpoint-{target.step} with the learning rate "
            f"x{g.state.lr_scale:g} ({lr:.3g}), rollback {g.state.rollbacks} of "
            f"{c.nan_max_rollbacks}",
            advice=NAN_ADVICE,
        )
        g.rollback_to = target
        g.halt(trainer)

    def after_log(self, trainer) -> None:
        # Trainer resets its loss sum with `tr_loss -= tr_loss`, which keeps a NaN forever.
        if self.poisoned and trainer._globalstep_last_logged == trainer.state.global_step:
            trainer._tr_loss.zero_()
            self.poisoned = False

    def lr_factor(self, checkpoint: str) -> tuple[float, float]:
        """(the factor from the checkpoint's learning rate to this run's, the checkpoint's rate):
        the configured one times the run state's factor, against the checkpoint's. That covers a
        rollback, a resume after one, and a resume with a changed ``learning_rate`` (which
        Trainer would ignore). Applied by ``engine.train.learning_rate``, the rates' one owner."""
        g = self.g
        saved = _marker(checkpoint).get("run_state") or {}
        saved_lr = float(saved.get("learning_rate", g.config.learning_rate))
        saved_scale = float(saved.get("lr_scale", 1.0))
        return (g.config.learning_rate * g.state.lr_scale) / (saved_lr * saved_scale), saved_lr

    def after_load(self, trainer, factor: float, saved_lr: float | None) -> None:
        """Say so in the run log when the configured learning rate changed the resumed schedule."""
        g = self.g
        if abs(factor - 1.0) >= 1e-12 and saved_lr is not None and saved_lr != g.config.learning_rate:
            g.log.emit(
                "note",
                step=trainer.state.global_step,
                message=f"learning_rate {saved_lr:g} -> {g.config.learning_rate:g}: the resumed schedule "
                f"is scaled by {factor:.4g}",
            )


def _v(x) -> str:
    return "?" if x is None else f"{x:.4g}"


def _marker(checkpoint: str | Path) -> dict:
    try:
        meta = json.loads((Path(checkpoint) / checkpoints.MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _found_inf_taker(trainer):
    """The optimizer that skips its own update on a device flag (torch's fused Adam/AdamW), or
    None. Not under a mixed-precision scaler (it sets the flag itself) or DeepSpeed."""
    opt = getattr(trainer, "optimizer", None)
    if getattr(opt, "scaler", None) is not None or getattr(trainer, "is_deepspeed_enabled", False):
        return None
    inner = getattr(opt, "optimizer", opt)  # accelerate's wrapper
    if not isinstance(inner, (torch.optim.Adam, torch.optim.AdamW)):
        return None
    if not inner.param_groups or not all(g.get("fused") for g in inner.param_groups):
        return None
    return inner
