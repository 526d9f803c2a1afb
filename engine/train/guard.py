"""Faults a long run meets, handled where they happen: NaN/Inf steps, out of memory, a full disk.

One ``Guard`` per run, attached to the ``LeviathanTrainer`` (its hooks call in here) and to
the trainer's callbacks. Everything it does is written to the run log.

- **NaN/Inf.** At the end of each optimizer step (after clipping, before ``optimizer.step``)
  the step's summed loss and the gradient norm are checked with one host sync, the only one
  the guard adds per optimizer step (none per micro-batch). A non-finite step is skipped:
  the gradients are dropped (set to None), so the optimizer leaves every weight and moment
  as it was. The step still counts: ``global_step`` and the LR schedule move on and its batch
  is consumed, as when a mixed-precision scaler skips a step. Its step record shows the
  NaN loss; the first skip of a streak raises an alert ``nan``. After ``nan_patience`` in a
  row the run rolls back to the newest complete checkpoint saved before the streak, with
  the learning rate times ``nan_lr_scale`` (kept in the run state), or stops (``diverged``).
- **Out of memory.** ``torch.OutOfMemoryError`` in a micro-batch: its gradients so far are
  dropped, memory is freed, and the step is run again from its first micro-batch with each
  micro-batch cut in two (at a document boundary when packed): half the micro batch, twice
  the accumulation, the same samples and effective batch, the same step counter. The new
  values go to the run state (``leviathan-state.json``) so a resume builds the trainer with
  them, and an alert ``oom`` tells the operator.
- **Disk space.** Before each save, free space on the output_dir's disk must be at least
  ``disk_margin`` times the last checkpoint's size. When it is not, or a write fails for
  lack of space, the partial folder is removed (older checkpoints and retention are not
  touched), an alert ``disk_full`` is raised and the run pauses until there is room (or the
  operator resumes it to try again); headless (no operator) it ends with exit 2. A run log
  that cannot be written (engine.run.events keeps its records in memory) is handled the same way,
  checked at every step end and before every save (so no checkpoint is newer than the log).
- **Best checkpoint.** An evaluation with a new best eval_loss at a step that is not a save
  step saves a checkpoint there (``save_best``), so retention can keep the best weights.
"""

from __future__ import annotations

import errno
import gc
import json
import math
import shutil
import time
from pathlib import Path

from transformers import TrainerCallback

from engine import faults
from engine.errors import UserError
from engine.run import checkpoints, runstate

MB = 1 << 20


class Halt(Exception):
    """The operator stopped the run while it waited for disk space: nothing more is saved."""


# -- splitting a micro-batch -----------------------------------------------------------------


def split_batch(batch: dict, pieces: int) -> list[dict] | None:
    """``batch`` cut into ``pieces`` smaller batches with the same tokens, or None if it cannot be.

    A padding-free batch (one row of packed documents with ``cu_seq_lens_q``) is cut at the
    document boundaries nearest to equal token counts; documents never attend to each other
    and a document's first label is already masked, so the pieces' losses sum to the
    batch's. A padded batch is cut along its rows.
    """
    import torch

    ids = batch["input_ids"]
    if "cu_seq_lens_q" in batch and ids.shape[0] == 1:
        cu = [int(x) for x in batch["cu_seq_lens_q"].tolist()]
        total, docs = ids.shape[1], len(cu) - 1
        if docs < pieces:
            return None
        cuts: list[int] = []
        for k in range(1, pieces):
            lo = cuts[-1] + 1 if cuts else 1
            hi = docs - (pieces - k)
            cuts.append(min(range(lo, hi + 1), key=lambda j, k=k: abs(cu[j] - k * total / pieces)))
        bounds = [0, *cuts, docs]
        out = []
        for a, b in zip(bounds, bounds[1:], strict=False):
            s, e = cu[a], cu[b]
            piece = {}
            for key, v in batch.items():
                if key in ("cu_seq_lens_q", "cu_seq_lens_k"):
                    piece[key] = v[a : b + 1] - v[a]
                elif key in ("max_length_q", "max_length_k"):
                    piece[key] = max(cu[x + 1] - cu[x] for x in range(a, b))
                elif key == "seq_idx":
                    piece[key] = v[:, s:e] - v[0, s]
                elif torch.is_tensor(v) and v.dim() >= 2 and v.shape[0] == 1 and v.shape[1] == total:
                    piece[key] = v[:, s:e]
                else:
                    piece[key] = v
            out.append(piece)
        return out
    rows = ids.shape[0]
    if rows < pieces:
        return None
    size = -(-rows // pieces)
    out = []
    for start in range(0, rows, size):
        out.append(
            {
                k: v[start : start + size] if torch.is_tensor(v) and v.dim() and v.shape[0] == rows else v
                for k, v in batch.items()
            }
        )
    return out


# -- disk ------------------------------------------------------------------------------------


def free_bytes(path: str | Path) -> int:
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def is_disk_full(exc: BaseException) -> bool:
    """A write that failed for lack of space, however the writer reported it."""
    seen = 0
    x: BaseException | None = exc
    while x is not None and seen < 8:
        if isinstance(x, OSError) and x.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(x)
        # safetensors (Rust) and torch's zip writer do not raise OSError
        if any(s in text for s in ("No space left", "os error 28", "Disk quota exceeded", "os error 122")):
            return True
        x = x.__cause__ or x.__context__
        seen += 1
    return False


def is_oom(exc: BaseException) -> bool:
    """Out of device memory, as the caching allocator or a library (cuBLAS, cuDNN) reports it."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        s in text for s in ("CUDA out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED")
    )


def _torch_write_failed(exc: BaseException) -> bool:
    # torch.save on a full disk: "[enforce fail at inline_container.cc] . unexpected pos N vs M"
    return isinstance(exc, RuntimeError) and ("unexpected pos" in str(exc) or "file write failed" in str(exc))


def _mb(n: float) -> str:
    return f"{n / MB:,.1f} MB"


# -- the guard -------------------------------------------------------------------------------


class Guard:
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
        self.trainable_bytes = 0
        self.splits = 1  # pieces each micro-batch of the dataloader is cut into (after OOM)
        self.rollback_to: checkpoints.Checkpoint | None = None
        self.trainer = None  # set by attach
        self.best: float | None = None
        self._halt = False
        self._streak: list[int] = []
        self._tr_poisoned = False
        self._new_step()

    def _new_step(self) -> None:
        self._step_loss = None
        self._batches: list = []
        self._num_items = None
        self._micro = 0
        self._metric_snapshot: dict | None = None

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
            self._save_state()
        return config.model_copy(update=update) if update else config

    def attach(self, trainer, callback) -> None:
        """Hook into a built trainer: its hooks call the guard; the guard writes into the markers."""
        trainer.guard = self
        self.trainer = trainer
        self.meta = callback.meta
        self._sync_meta()
        self.trainable_bytes = sum(
            p.numel() * p.element_size() for p in trainer.model.parameters() if p.requires_grad
        )
        trainer.add_callback(GuardCallback(self))

    def _sync_meta(self) -> None:
        # The configured learning rate goes in too: a resume with another one rescales the schedule.
        self.meta["run_state"] = {**self.state.effective(), "learning_rate": self.config.learning_rate}

    def _save_state(self) -> None:
        from engine.train import dist

        if dist.is_main():  # every rank decides the same; one writes
            runstate.save(self.output_dir, self.state)
        self._sync_meta()

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
            self._halt = False
            self._streak = []
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

    # -- per step (trainer hooks) -----------------------------------------------------------

    def on_batches(self, trainer, batches: list, num_items) -> None:
        """The micro-batches of the coming optimizer step (kept to run it again after an OOM)."""
        self._new_step()
        self._batches, self._num_items = batches, num_items
        if self.c.oom_retry:
            # _add_metric replaces its tensors, so a shallow copy is a snapshot of the step's start.
            self._metric_snapshot = dict(trainer._metric_sums["train"])

    def _pieces(self, step_fn, model, batch, num_items):
        if self.splits == 1:
            return step_fn(model, batch, num_items)
        parts = split_batch(batch, self.splits)
        if parts is None:
            raise _CannotSplit
        loss = None
        for part in parts:
            piece_loss = step_fn(model, part, num_items)
            loss = piece_loss if loss is None else loss + piece_loss
        return loss

    def training_step(self, trainer, step_fn, model, inputs, num_items):
        """One micro-batch's forward and backward; on OOM, the whole step again at half size."""

        index = self._micro
        self._micro += 1
        redo = False
        while True:
            try:
                if redo:
                    self._step_loss = None
                    for earlier in self._batches[:index]:
                        self._add_step_loss(self._pieces(step_fn, model, earlier, num_items))
                loss = self._pieces(step_fn, model, inputs, num_items)
                break
            except RuntimeError as e:  # torch.OutOfMemoryError, or cuBLAS/cuDNN failing to allocate
                if not is_oom(e):
                    raise
                message = str(e).strip().splitlines()[0] if str(e).strip() else "CUDA out of memory"
            except _CannotSplit:
                message = "a micro-batch could not be cut further"
            # Outside the except block: the failed step's tensors are released with its frames.
            self._halve(trainer, model, message)
            redo = True
        self._add_step_loss(loss)
        return loss

    def _add_step_loss(self, loss) -> None:
        self._step_loss = loss.detach() if self._step_loss is None else self._step_loss + loss.detach()

    def _halve(self, trainer, model, message: str) -> None:
        import torch

        step = trainer.state.global_step + 1
        model.zero_grad(set_to_none=True)
        if self._metric_snapshot is not None:
            trainer._metric_sums["train"] = dict(self._metric_snapshot)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        base_micro = trainer.args.per_device_train_batch_size
        base_accum = trainer.args.gradient_accumulation_steps
        micro, accum = base_micro // self.splits, base_accum * self.splits
        world = trainer.accelerator.num_processes
        if not self.c.oom_retry or world > 1 or micro < 2 or micro % 2:
            why = (
                "guard.oom_retry is off"
                if not self.c.oom_retry
                else "retrying is for single-GPU runs"
                if world > 1
                else f"micro batch {micro} cannot be halved to the same effective batch"
            )
            self.log.emit(
                "alert",
                rule="oom",
                level="critical",
                step=step,
                message=f"out of memory at step {step} with micro batch {micro}: {why} ({message})",
                advice=OOM_ADVICE,
            )
            raise UserError(
                f"out of memory at step {step} with micro batch {micro} x accumulation {accum} "
                f"(sequence_len {self.config.sequence_len}): {why}",
                OOM_ADVICE,
            )
        self.splits *= 2
        new_micro, new_accum = base_micro // self.splits, base_accum * self.splits
        self.state.micro_batch_size, self.state.gradient_accumulation_steps = new_micro, new_accum
        if self.state.derived_from is None:
            self.state.derived_from = [self.config.micro_batch_size, self.config.gradient_accumulation_steps]
        self.state.record(
            step,
            "oom",
            message,
            micro_batch_size=[micro, new_micro],
            gradient_accumulation_steps=[accum, new_accum],
        )
        self._save_state()
        self.log.emit(
            "alert",
            rule="oom",
            level="warning",
            step=step,
            message=f"out of memory at step {step} (micro batch {micro} x accumulation {accum}): the step "
            f"runs again with micro batch {new_micro} x accumulation {new_accum}, the same effective batch "
            f"of {micro * accum} ({message})",
            advice="nothing to do: the run goes on at the smaller micro batch, after a resume too "
            f"(kept in {runstate.path_in(self.output_dir)}); for a new run set micro_batch_size: {new_micro} "
            f"and gradient_accumulation_steps: {new_accum}",
            micro_batch_size=new_micro,
            gradient_accumulation_steps=new_accum,
        )

    def on_forward(self, trainer) -> None:
        faults.on_forward(trainer.state.global_step + 1)

    def on_loss(self, trainer, loss):
        return faults.on_loss(loss, trainer.state.global_step + 1)

    def check_step(self, trainer, model, grad_norm) -> None:
        """After clipping, before ``optimizer.step``: skip the update if anything is not finite."""
        import torch

        loss = self._step_loss
        self._step_loss = None
        norm = grad_norm if torch.is_tensor(grad_norm) else None
        ok = torch.isfinite(norm) if norm is not None else None
        # Several processes: decide on the (all-reduced, identical) grad norm alone, so that every
        # rank skips the same steps; a local loss could differ between them.
        if loss is not None and trainer.accelerator.num_processes == 1:
            fin = torch.isfinite(loss).all()
            ok = fin if ok is None else ok & fin.to(ok.device)
        finite = bool(ok) if ok is not None else True  # the guard's one host sync per optimizer step
        if finite and grad_norm is not None and norm is None:
            finite = math.isfinite(float(grad_norm))
        step = trainer.state.global_step + 1
        if finite:
            self._streak = []
            return
        deepspeed = getattr(trainer, "is_deepspeed_enabled", False)
        if not deepspeed:  # DeepSpeed keeps its own gradient buffers and steps regardless
            model.zero_grad(set_to_none=True)  # no gradients: the optimizer updates nothing
        self._tr_poisoned = True
        self._streak.append(step)
        loss_v = float(loss.float().sum()) if loss is not None else None
        norm_v = float(grad_norm) if grad_norm is not None else None
        self.log.emit("skip", step=step, loss=loss_v, grad_norm=norm_v, streak=len(self._streak))
        c = self.c
        if len(self._streak) == 1:
            then = (
                f"rolls back to the last good checkpoint with the learning rate x{c.nan_lr_scale:g}"
                if c.nan_policy == "rollback"
                else "stops"
            )
            self.log.emit(
                "alert",
                rule="nan",
                level="critical",
                step=step,
                message=f"step {step}: loss {_v(loss_v)}, grad norm {_v(norm_v)}: "
                + (
                    "DeepSpeed applies its own update (not skipped)"
                    if deepspeed
                    else "the optimizer step was skipped (no update)"
                ),
                advice=f"nothing to do yet; after {c.nan_patience} in a row the run {then}",
            )
        if len(self._streak) >= c.nan_patience:
            self._act(trainer, step)

    def _act(self, trainer, step: int) -> None:
        first, c = self._streak[0], self.c
        what = f"{len(self._streak)} non-finite steps in a row ({first}-{step})"
        if c.nan_policy == "rollback" and self.state.rollbacks < c.nan_max_rollbacks:
            good = [ck for ck in checkpoints.scan(self.output_dir)[0] if ck.step < first]
            if good:
                target = good[-1]
                old = self.state.lr_scale
                self.state.rollbacks += 1
                self.state.lr_scale = old * c.nan_lr_scale
                self.state.record(
                    step, "nan_rollback", what, to_step=target.step, lr_scale=[old, self.state.lr_scale]
                )
                self._save_state()
                lr = self.config.learning_rate * self.state.lr_scale
                self.log.emit(
                    "alert",
                    rule="nan_rollback",
                    level="critical",
                    step=step,
                    message=f"{what}: rolling back to checkpoint-{target.step} with the learning rate "
                    f"x{self.state.lr_scale:g} ({lr:.3g}), rollback {self.state.rollbacks} of "
                    f"{c.nan_max_rollbacks}",
                    advice=NAN_ADVICE,
                )
                self.rollback_to = target
                self._halt_now(trainer)
                return
            why = "no complete checkpoint from before them"
        elif c.nan_policy == "rollback":
            why = f"{c.nan_max_rollbacks} rollback(s) already made"
        else:
            why = "guard.nan_policy is stop"
        self.status = "diverged"
        self.log.emit(
            "alert",
            rule="nan_stop",
            level="critical",
            step=step,
            message=f"{what}: the run stops ({why})",
            advice=NAN_ADVICE,
        )
        self._halt_now(trainer)

    def _halt_now(self, trainer) -> None:
        self._halt = True
        trainer.control.should_training_stop = True

    def after_log(self, trainer) -> None:
        # Trainer resets its loss sum with `tr_loss -= tr_loss`, which keeps a NaN forever.
        if self._tr_poisoned and trainer._globalstep_last_logged == trainer.state.global_step:
            trainer._tr_loss.zero_()
            self._tr_poisoned = False

    def after_load(self, trainer, checkpoint: str) -> None:
        """A loaded optimizer and schedule carry the learning rate they were saved with: rescale
        them to the configured one times the run state's factor. That covers a rollback, a resume
        after one, and a resume with a changed ``learning_rate`` (which Trainer would ignore)."""
        saved = _marker(checkpoint).get("run_state") or {}
        saved_lr = float(saved.get("learning_rate", self.config.learning_rate))
        saved_scale = float(saved.get("lr_scale", 1.0))
        factor = (self.config.learning_rate * self.state.lr_scale) / (saved_lr * saved_scale)
        if abs(factor - 1.0) < 1e-12:
            return
        for group in trainer.optimizer.param_groups:
            group["lr"] *= factor
            if "initial_lr" in group:
                group["initial_lr"] *= factor
        sched = trainer.lr_scheduler
        if hasattr(sched, "base_lrs"):
            sched.base_lrs = [b * factor for b in sched.base_lrs]
        if getattr(sched, "_last_lr", None):
            sched._last_lr = [x * factor for x in sched._last_lr]
        if saved_lr != self.config.learning_rate:
            self.log.emit(
                "note",
                step=trainer.state.global_step,
                message=f"learning_rate {saved_lr:g} -> {self.config.learning_rate:g}: the resumed schedule "
                f"is scaled by {factor:.4g}",
            )

    # -- saves ------------------------------------------------------------------------------

    def space_needed(self) -> int:
        last = checkpoints.latest(self.output_dir)
        size = last.size_bytes if last else 3 * self.trainable_bytes + MB  # weights + two Adam moments
        return int(size * self.c.disk_margin)

    def save_checkpoint(self, trainer, do_save) -> None:
        # A save whose step record could not be written would resume past a step the log lacks.
        self.check_log(trainer)
        step = trainer.state.global_step
        folder = Path(trainer.args.output_dir) / f"checkpoint-{step}"
        need = self.space_needed()
        self._clear_the_way(folder, step)
        force = False
        while True:
            free = free_bytes(self.output_dir)
            if free < need and not force:
                force = self._wait_for_space(trainer, step, need, free, None)
                continue
            force = False
            try:
                if dist_main():
                    checkpoints.begin_save(folder)  # before the first file: a kill leaves it ours
                do_save()
                return
            except Exception as e:
                full = is_disk_full(e) or (_torch_write_failed(e) and free_bytes(self.output_dir) < need)
                if not full:
                    raise
                error = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            shutil.rmtree(folder, ignore_errors=True)
            free = free_bytes(self.output_dir)
            need = max(need, free + max(need // 4, MB))  # it did not fit: wait for more than there is now
            force = self._wait_for_space(trainer, step, need, free, error)

    def _clear_the_way(self, folder: Path, step: int) -> None:
        """The folder this save writes into, if there is one already: ours is rewritten (flagged
        and unmarked first, so a kill meanwhile leaves a torn folder of ours, never a
        complete-looking mix); anyone else's is renamed beside it, never written over."""
        kind = checkpoints.kind_of(folder)
        if kind is None or not dist_main():
            return
        if kind == "complete":
            (folder / checkpoints.SAVING).touch()
            (folder / checkpoints.MARKER).unlink()
        elif kind == "foreign":
            dest = checkpoints.set_aside(folder, "set-aside")
            self.log.emit(
                "alert",
                rule="foreign_checkpoint",
                level="warning",
                step=step,
                message=f"{folder} was not written by this engine ({checkpoints.why_foreign(dest)}): "
                f"renamed to {dest.name} so that this run's checkpoint-{step} does not overwrite it",
                advice="nothing to do; move it elsewhere when you no longer need it in output_dir",
            )

    def _wait_for_space(self, trainer, step: int, need: int, free: int, error: str | None) -> bool:
        """Alert, then wait for room (True: the operator asked to try anyway). Headless: exit 2."""
        last = checkpoints.latest(self.output_dir)
        since = f"checkpoint-{last.step}" if last else "the start (no checkpoint yet)"
        what = (
            f"the save of checkpoint-{step} failed ({error}); the partial folder was removed"
            if error
            else (f"checkpoint-{step} was not saved")
        )
        message = (
            f"{self.output_dir}: disk full: {_mb(free)} free, about {_mb(need)} needed; {what}. "
            f"Older checkpoints are intact; nothing was deleted"
        )
        present = getattr(self.controls, "operator_present", True)
        advice = (
            "free space on that disk (or move output_dir); training goes on by itself when there is "
            "room (resume: try now)"
            if present
            else f"free space on that disk (or move output_dir), then run the same command again: it "
            f"resumes from {since}"
        )
        self.log.emit(
            "alert",
            rule="disk_full",
            level="critical",
            step=step,
            message=message,
            advice=advice,
            free_mb=round(free / MB, 1),
            need_mb=round(need / MB, 1),
        )
        if not present:
            raise UserError(message, advice)
        forced = self._pause_until(trainer, step, since, lambda: free_bytes(self.output_dir) >= need)
        self.log.emit(
            "resumed",
            step=step,
            reason="operator" if forced else "disk space freed",
            free_mb=round(free_bytes(self.output_dir) / MB, 1),
        )
        return forced

    def _pause_until(self, trainer, step: int, since: str, ready) -> bool:
        """Paused (chat still answered) until ``ready()`` (checked every disk_poll_s) or the
        operator resumes (True) or stops (Halt)."""
        c = self.controls
        self.log.emit("paused", step=step, reason="disk_full")
        c.request_pause()
        next_look = time.time() + self.c.disk_poll_s
        while True:
            if c.stop.is_set():
                self.log.emit(
                    "note",
                    step=step,
                    message=f"stopped while the disk was full: steps after {since} are not saved",
                )
                raise Halt
            if not c.pause.is_set():
                return True  # the operator resumed: try now
            if time.time() >= next_look:
                if ready():
                    c.request_resume()
                    return False
                next_look = time.time() + self.c.disk_poll_s
            c.run_jobs(model=trainer.model, tokenizer=trainer.processing_class, step=step)
            time.sleep(0.05)

    def check_log(self, trainer) -> None:
        """The run log could not be written (its disk is full, or another OSError): handled as
        a full checkpoint disk. Its records wait in memory meanwhile, so nothing is lost; the
        reserve beside the log makes room for the alert, the pause and the end record."""
        log, step = self.log, trainer.state.global_step
        if getattr(log, "error", None) is None or log.retry():
            return
        from engine.train import dist

        error = log.error
        log.release_reserve()
        last = checkpoints.latest(self.output_dir)
        since = f"checkpoint-{last.step}" if last else "the start (no checkpoint yet)"
        message = (
            f"{log.path.parent}: the run log cannot be written ({_first_line(error)}); training holds "
            f"at step {step} with {len(log.pending)} record(s) kept in memory. Checkpoints are intact; "
            "nothing was deleted"
        )
        present = getattr(self.controls, "operator_present", True) and dist.world_size() == 1
        advice = (
            "free space on that disk (or fix it); training goes on by itself when the log can be "
            "written again (resume: try now)"
            if present
            else "free space on that disk (or move logs_dir), then run the same command again: it "
            f"resumes from {since}"
        )
        log.emit(
            "alert",
            rule="disk_full",
            level="critical",
            step=step,
            where="logs",
            message=message,
            advice=advice,
        )
        if not present:
            raise UserError(message, advice)
        forced = self._pause_until(trainer, step, since, lambda: log.retry() and log.restore_reserve())
        log.emit("resumed", step=step, reason="operator" if forced else "the run log can be written again")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def dist_main() -> bool:
    from engine.train import dist

    return dist.is_main()


class _CannotSplit(Exception):
    pass


OOM_ADVICE = (
    "turn gradient_checkpointing on, lower sequence_len or micro_batch_size, or use adapter: qlora "
    "(guide: micro_batch_size: 1, gradient_accumulation_steps: 16)"
)
NAN_ADVICE = (
    "lower learning_rate (guide: 1e-4 if the loss explodes) or check the data around these steps; "
    "the run log's `skip` records list them"
)


def _v(x) -> str:
    return "?" if x is None else f"{x:.4g}"


def _marker(checkpoint: str | Path) -> dict:
    try:
        meta = json.loads((Path(checkpoint) / checkpoints.MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


class GuardCallback(TrainerCallback):
    """The guard's part at step boundaries: halting without a save, saving a new best."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard

    def on_train_begin(self, args, state, control, **kwargs):
        # A resumed TrainerState brings the checkpoint's logging/eval/save intervals and Trainer
        # only warns; the config's (changed on resume, recorded) are the ones to honour.
        state.compute_steps(args, state.max_steps)
        g = self.guard
        g._halt, g._streak, g._tr_poisoned = False, [], False
        g._new_step()
        best = checkpoints.best(checkpoints.scan(g.output_dir)[0])
        g.best = best.meta.get("eval_loss") if best else None

    def on_step_end(self, args, state, control, **kwargs):
        self.guard.check_log(self.guard.trainer)
        if self.guard._halt:  # a rollback or a stop: nothing of this step is evaluated or saved
            control.should_save = False
            control.should_evaluate = False
            control.should_training_stop = True
        return control

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        g = self.guard
        loss = (metrics or {}).get("eval_loss")
        if loss is None or not math.isfinite(float(loss)):
            return control
        if g.best is None or float(loss) < g.best:
            g.best = float(loss)
            if g.c.save_best and args.save_strategy == "steps" and not control.should_save:
                control.should_save = True
                if state.is_world_process_zero:
                    g.log.emit(
                        "note",
                        step=state.global_step,
                        message=f"new best eval_loss {float(loss):.4f} at step {state.global_step}, "
                        "not a save step: saving it so the best checkpoint is kept",
                    )
        return control
