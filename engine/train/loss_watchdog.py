"""Axolotl's loss watchdog (``loss_watchdog_threshold`` / ``loss_watchdog_patience``).

A logged train loss above the threshold for ``patience`` logs in a row stops the run, as
Axolotl's LossWatchDogCallback does; here the stop is an alert in the run log and the run
ends as ``diverged`` (the guard's word for a run that went wrong), its checkpoints kept.
"""

from __future__ import annotations

from transformers import TrainerCallback


class LossWatchdog(TrainerCallback):
    def __init__(self, log, threshold: float, patience: int | None) -> None:
        self.log, self.threshold, self.patience = log, threshold, patience or 3
        self.violations = 0
        self.status: str | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        self.violations = self.violations + 1 if loss > self.threshold else 0
        if self.violations >= self.patience and self.status is None:
            self.status = "diverged"
            control.should_training_stop = True
            self.log.emit(
                "alert",
                rule="loss_watchdog",
                level="critical",
                step=state.global_step,
                message=f"train loss above loss_watchdog_threshold {self.threshold:g} for "
                f"{self.violations} logs in a row (last {loss:.4f}): the run stops",
                advice="lower the learning rate, check the data, or raise loss_watchdog_threshold",
            )
