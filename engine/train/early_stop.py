"""Early stopping on eval_loss (``early_stopping_patience``, ``early_stopping_threshold``).

transformers' own ``EarlyStoppingCallback`` decides, as Axolotl uses it: an evaluation counts
as an improvement when eval_loss is below the best of the earlier evaluations (Trainer's
``state.best_metric``, with ``metric_for_best_model: eval_loss``) by more than the threshold;
``patience`` evaluations in a row without one stop the run. Here the stop also saves a
checkpoint of that step (the best one was saved when it was found, engine/train/guard/best.py,
and retention keeps it), writes an ``early_stopped`` record (the eval losses it judged, the
best step) and ends the run with status ``early_stopped``.
"""

from __future__ import annotations

from transformers import EarlyStoppingCallback


class EarlyStop(EarlyStoppingCallback):
    def __init__(self, log, patience: int, threshold: float) -> None:
        super().__init__(early_stopping_patience=patience, early_stopping_threshold=threshold)
        self.log = log
        self.status: str | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        # A resume goes on counting where the checkpoint left off (Trainer saves this callback's
        # state in trainer_state.json; its own restore would rebuild the callback without the log).
        saved = (state.stateful_callbacks or {}).get(type(self).__name__)
        saved = saved[0] if isinstance(saved, list) and saved else saved
        if isinstance(saved, dict):
            count = saved.get("attributes", {}).get("early_stopping_patience_counter")
            if isinstance(count, int):
                self.early_stopping_patience_counter = count

    def on_evaluate(self, args, state, control, metrics, **kwargs):
        super().on_evaluate(args, state, control, metrics, **kwargs)
        if not control.should_training_stop or self.status is not None:
            return control
        if self.early_stopping_patience_counter < self.early_stopping_patience:
            return control  # another callback stops the run
        self.status = "early_stopped"
        control.should_save = True  # the step it stops at is kept, as a stop by the operator is
        if state.is_world_process_zero:
            self.log.emit(
                "early_stopped",
                step=state.global_step,
                eval_loss=float(metrics["eval_loss"]),
                best_eval_loss=state.best_metric,
                best_step=state.best_global_step,
                patience=self.early_stopping_patience,
                threshold=self.early_stopping_threshold,
                message=f"eval_loss has not improved by more than {self.early_stopping_threshold:g} for "
                f"{self.early_stopping_patience_counter} evaluation(s): the run stops at step "
                f"{state.global_step}; the best checkpoint (step {state.best_global_step}) is kept",
            )
        return control


def attach(config, log, trainer) -> EarlyStop | None:
    """Add early stopping to ``trainer`` when the config asks for it."""
    if not config.early_stopping_patience:
        return None
    callback = EarlyStop(log, config.early_stopping_patience, config.early_stopping_threshold)
    trainer.add_callback(callback)
    return callback
