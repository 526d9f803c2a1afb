"""The guard's coordinating piece: the trainer's hooks call in here and each goes to the fault it
concerns; it keeps the run state and runs ``trainer.train`` again after a NaN rollback."""

from __future__ import annotations

from pathlib import Path

from transformers import TrainerCallback

from engine import faults
from engine.run import checkpoints, runstate
from engine.train import dist
from engine.train.guard.best import BestSave
from engine.train.guard.disk import DiskGuard, Halt
from engine.train.guard.nan import NanGuard
from engine.train.guard.oom import MicroBatches


class Guard:
    """One per run, attached to the ``LeviathanTrainer`` and to its callbacks; all it does is
    written to the run log."""

    def __init__(self, config, log, controls, output_dir: str | Path, *, fresh: bool = False) -> None:
        self.config = config
        self.c = config.guard
        self.log = log
        self.controls = controls
        self.output_dir = Path(output_dir)
        if fresh:
            runstate.clear(self.output_dir)
        self.state = runstate.load(self.output_dir)
        self.meta: dict = {}
        self.status: str | None = None  # set when the guard ended the run
        self.trainer = None  # set by attach
        self.commands = None  # set by attach
        self.halted = False  # a rollback or a stop: nothing of the current step is evaluated or saved
        self.rollback_to: checkpoints.Checkpoint | None = None
        self.nan = NanGuard(self)
        self.oom = MicroBatches(self)
        self.disk = DiskGuard(self)
        self.best = BestSave(self)

    # -- wiring ---------------------------------------------------------------------------

    def effective_config(self, config, resuming: bool):
        """The config the trainer is built with: the run state's micro batch after an OOM.

        The state applies while the config still has the micro batch and accumulation it was
        derived from (a changed config is the operator's new choice). A start without a
        checkpoint is a new trajectory: NaN rollbacks and their learning-rate factor reset.
        """
        s = self.state
        changed = False
        if not resuming and (s.lr_scale != 1.0 or s.rollbacks):
            s.lr_scale, s.rollbacks = 1.0, 0
            changed = True
        update = {}
        base = (config.micro_batch_size, config.gradient_accumulation_steps)
        if s.micro_batch_size and tuple(s.derived_from or ()) != base:
            s.micro_batch_size = s.gradient_accumulation_steps = s.derived_from = None
            changed = True
        if s.micro_batch_size:
            update["micro_batch_size"] = s.micro_batch_size
            update["gradient_accumulation_steps"] = s.gradient_accumulation_steps
            last = next((c for c in reversed(s.changes) if c.get("what") == "oom"), {})
            self.log.emit(
                "alert",
                rule="oom",
                level="info",
                message=f"micro batch {s.micro_batch_size} x accumulation {s.gradient_accumulation_steps} "
                f"(config: {base[0]} x {base[1]}), as the run state says since the out of memory at "
                f"step {last.get('step', '?')}",
                advice=f"nothing to do; {runstate.path_in(self.output_dir)} keeps it",
            )
        if changed:
            self.save_state()
        return config.model_copy(update=update) if update else config

    def attach(self, trainer, callback, commands=None) -> None:
        """Hook into a built trainer: its hooks call the guard; the guard writes into the markers."""
        trainer.guard = self
        self.commands = commands  # engine.train.commands.CommandSource: read while a full disk holds
        self.trainer = trainer
        self.meta = callback.meta
        self._sync_meta()
        self.disk.trainable_bytes = sum(
            p.numel() * p.element_size() for p in trainer.model.parameters() if p.requires_grad
        )
        trainer.add_callback(GuardCallback(self))

    def _sync_meta(self) -> None:
        # The configured learning rate goes in too: a resume with another one rescales the schedule.
        self.meta["run_state"] = {**self.state.effective(), "learning_rate": self.config.learning_rate}

    def save_state(self) -> None:
        if dist.is_main():  # every rank decides the same; one writes
            runstate.save(self.output_dir, self.state)
        self._sync_meta()

    def alert(self, rule: str, level: str, step: int, *, message: str, advice: str, **fields) -> None:
        self.log.emit("alert", rule=rule, level=level, step=step, message=message, advice=advice, **fields)

    def halt(self, trainer) -> None:
        # Nothing of the current step is evaluated or saved. GuardCallback says so again at the
        # step's end, over the flow callback's schedule; a verdict read after it (the NaN guard's
        # on the device path) is only seen here.
        self.halted = True
        trainer.control.should_training_stop = True
        trainer.control.should_save = False
        trainer.control.should_evaluate = False

    def train(self, trainer, ckpt) -> None:
        """``trainer.train`` from ``ckpt``, again from an earlier checkpoint after a NaN rollback."""
        path = str(ckpt.path) if ckpt else None
        while True:
            try:
                trainer.train(resume_from_checkpoint=path)
            except Halt:
                self.status = "stopped"
                self.controls.close_jobs("training has ended")
                return
            target, self.rollback_to = self.rollback_to, None
            if target is None:
                return
            for later in checkpoints.scan(self.output_dir)[0]:
                if later.step > target.step:  # saved on the abandoned stretch; its steps run again
                    checkpoints.discard(later.path)
                    self.log.emit(
                        "checkpoint_removed", step=target.step, path=str(later.path), reason="nan_rollback"
                    )
            self.halted = False
            self.nan.streak = []
            self.controls.jobs_closed.clear()  # on_train_end closed the chat queue; training goes on
            self.log.emit(
                "resume",
                step=target.step,
                from_step=target.step,
                path=str(target.path),
                reason="nan_rollback",
                lr_scale=self.state.lr_scale,
            )
            path = str(target.path)

    # -- the trainer's hooks (engine/train/trainer.py) --------------------------------------

    def on_batches(self, trainer, batches: list, num_items) -> None:
        self.oom.on_batches(trainer, batches, num_items)

    def training_step(self, trainer, step_fn, model, inputs, num_items):
        return self.oom.training_step(trainer, step_fn, model, inputs, num_items)

    def on_forward(self, trainer) -> None:
        faults.on_forward(trainer.state.global_step + 1)

    def on_loss(self, trainer, loss):
        return faults.on_loss(loss, trainer.state.global_step + 1)

    def check_step(self, trainer, model, grad_norm) -> None:
        self.nan.check_step(trainer, model, grad_norm, self.oom.take_loss())

    def settle(self, trainer, verdicts: list[tuple] | None = None) -> None:
        self.nan.settle(trainer, verdicts)

    def after_log(self, trainer) -> None:
        self.nan.after_log(trainer)

    def after_load(
        self, trainer, checkpoint: str, factor: float = 1.0, saved_lr: float | None = None
    ) -> None:
        self.nan.after_load(trainer, factor, saved_lr)

    def save_checkpoint(self, trainer, do_save) -> None:
        self.disk.save_checkpoint(trainer, do_save)


class GuardCallback(TrainerCallback):
    """The guard's part at step boundaries: halting without a save, saving a new best."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard

    def on_train_begin(self, args, state, control, **kwargs):
        # A resumed TrainerState brings the checkpoint's logging/eval/save intervals and Trainer
        # only warns; the config's (changed on resume, recorded) are the ones to honour.
        state.compute_steps(args, state.max_steps)
        g = self.guard
        g.halted = False
        g.nan.reset()
        g.oom.new_step()
        g.best.reset()

    def on_step_end(self, args, state, control, **kwargs):
        g = self.guard
        g.disk.check_log(g.trainer)
        if g.halted:  # a rollback or a stop: nothing of this step is evaluated or saved
            control.should_save = False
            control.should_evaluate = False
            control.should_training_stop = True
        return control

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        return self.guard.best.on_evaluate(args, state, control, metrics)
