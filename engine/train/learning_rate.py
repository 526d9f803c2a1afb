"""The learning rate after a checkpoint is loaded: one owner, one function.

A checkpoint's optimizer and scheduler state carry the rates its own run set. This run's differ in
two ways, both decided before this is called:

- the schedule: its lambdas are built for this run's number of steps (a resume with a larger
  ``--max-steps``), and only its position (``last_epoch``) comes from the checkpoint. At the end
  of a 2-step cosine run the saved rate is 0.0; the next step must train at this run's rate;
- the level: the configured ``learning_rate`` times the guard's run-state factor (NaN
  rollbacks), against the checkpoint's (``engine.train.guard.nan.NanGuard.lr_factor``).

``resume_learning_rate`` writes both into the optimizer's groups and the scheduler; nothing else
touches the rates after a load.
"""

from __future__ import annotations

import torch


def resume_learning_rate(optimizer, scheduler, factor: float = 1.0) -> None:
    """The rate of the step to come from this run's schedule, then scaled by ``factor``."""
    scheduler = getattr(scheduler, "scheduler", scheduler)  # accelerate's wrapper, where there is one
    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        step = scheduler.last_epoch
        rates = [base * fn(step) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)]
        for group, lr in zip(optimizer.param_groups, rates, strict=True):
            group["lr"] = lr
        scheduler._last_lr = list(rates)
    if abs(factor - 1.0) < 1e-12:
        return
    for group in optimizer.param_groups:
        group["lr"] *= factor
        if "initial_lr" in group:
            group["initial_lr"] *= factor
    if hasattr(scheduler, "base_lrs"):
        scheduler.base_lrs = [b * factor for b in scheduler.base_lrs]
    if getattr(scheduler, "_last_lr", None):
        scheduler._last_lr = [x * factor for x in scheduler._last_lr]
