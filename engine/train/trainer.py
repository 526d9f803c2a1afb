"""TRL's SFTTrainer with the per-micro-batch host syncs taken out.

TRL computes its entropy / token-accuracy metrics and token counts with ``.item()`` on every
micro-batch, and Trainer counts input tokens the same way: each call drains the GPU queue
and leaves it idle while Python launches the next kernels. Here the same numbers are kept
as device tensors and read once per logging step, and on CUDA a step later still, so that no
step boundary waits for the GPU (engine.train.step_lag). The loss is TRL's own: the fused LM
head (per-token log-probs in chunks, never the full logits), summed over the labelled tokens.
"""

from __future__ import annotations

import contextlib
import time
import weakref

import torch
from transformers import TrainerCallback
from trl import SFTTrainer

from engine.train import step_lag
from engine.train.learning_rate import resume_learning_rate

_nothing = contextlib.nullcontext


class LeviathanTrainer(SFTTrainer):
    guard = None  # engine.train.guard.Guard, attached by engine.train.train: NaN/OOM/disk handling
    hold = None  # engine.train.callback.CockpitCallback.hold: the pause at a step boundary
    holding = None  # CockpitCallback.pauses_here: this boundary pauses (its record is written first)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._pending_tokens: torch.Tensor | int = 0
        self._metric_sums: dict[str, dict[str, torch.Tensor]] = {"train": {}, "eval": {}}
        self.lag_records = step_lag.wanted(
            self.args.device, self.accelerator.num_processes, self.is_deepspeed_enabled
        )
        self._lagged: step_lag.Lagged | None = None
        self._record_at: float | None = None  # a lagged record's time (record_time)
        self.add_callback(_SettleLagged(self))

    def _add_metric(self, mode: str, name: str, value: torch.Tensor) -> None:
        sums = self._metric_sums[mode]
        sums[name] = sums[name] + value.detach() if name in sums else value.detach().clone()

    eval_categories = None  # engine.train.eval_categories.CategorySums: eval loss per _category

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self._label_category = inputs.pop("label_category", None)  # not the model's: read below
        guard = self.guard if model.training and not return_outputs else None
        if guard is not None:
            guard.on_forward(self)
        loss = self._compute_loss(model, inputs, return_outputs, num_items_in_batch)
        return guard.on_loss(self, loss) if guard is not None else loss

    def _compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs or self.compute_loss_func is not None or self.label_smoother is not None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.aux_loss_enabled or self.args.loss_type != "nll":
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        mode = "train" if model.training else "eval"
        inputs["use_cache"] = False
        outputs = model(**inputs, fused_lm_head=True)
        per_token = -outputs.log_probs
        num_tokens = outputs.label_mask.sum() if num_items_in_batch is None else num_items_in_batch
        loss = per_token.sum() / torch.as_tensor(num_tokens, device=per_token.device).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        valid = outputs.label_mask.sum()
        self._add_metric(mode, "valid", valid)
        self._add_metric(mode, "entropy", outputs.entropy.detach().sum())
        self._add_metric(mode, "correct", outputs.is_top1.sum())
        if mode == "eval" and self.eval_categories is not None and self._label_category is not None:
            self.eval_categories.add(per_token, outputs.label_mask, self._label_category)
        return loss

    def _track_num_input_tokens(self, inputs):
        if self.args.include_num_input_tokens_seen == "no":
            return
        ids = inputs["input_ids"]
        if "attention_mask" in inputs:
            count = inputs["attention_mask"].sum()
        elif "position_ids" in inputs:
            count = ids.numel()  # padding-free: every position is a real token; no sync
        else:
            count = (ids != self.processing_class.pad_token_id).sum()
        self._pending_tokens = self._pending_tokens + count

    def _flush_tokens(self) -> None:
        pending = self._pending_tokens
        if isinstance(pending, torch.Tensor):
            pending = int(self.accelerator.gather(pending.reshape(1)).sum().item())
        elif self.accelerator.num_processes > 1:
            t = torch.tensor([pending], device=self.args.device)
            pending = int(self.accelerator.gather(t).sum().item())
        self.state.num_input_tokens_seen += pending
        self._pending_tokens = 0

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        self._settle_lagged()  # a lagged step's record goes first
        self._flush_tokens()
        mode = "train" if self.model.training else "eval"
        sums = self._metric_sums[mode]
        read = {k: float(self.accelerator.gather(v.reshape(1)).sum().item()) for k, v in sums.items()}
        sums.clear()
        self._write_log(logs, mode, read, start_time)

    def _write_log(self, logs: dict, mode: str, sums: dict[str, float], start_time) -> None:
        if sums:
            valid = sums["valid"] or 1.0
            prefix = "eval_" if mode == "eval" else ""
            logs[f"{prefix}entropy"] = sums["entropy"] / valid
            logs[f"{prefix}mean_token_accuracy"] = sums["correct"] / valid
        if mode == "eval" and self.eval_categories is not None and "eval_loss" in logs:
            from engine.train.eval_categories import KEY

            logs[KEY] = self.eval_categories.take(self.accelerator.gather)
        self._metrics[mode].clear()
        super().log(logs, start_time)

    # -- a step's record one step late (engine.train.step_lag) -------------------------------

    def _lag_now(self) -> bool:
        """This boundary's record may wait a step: nothing here acts on it."""
        c, s = self.control, self.state
        acts = c.should_evaluate or c.should_save or c.should_training_stop or c.should_epoch_stop
        last = 0 < s.max_steps <= s.global_step
        return self.lag_records and not acts and not last and not (self.holding and self.holding())

    def _lag(self, tr_loss, grad_norm, start_time, learning_rate) -> None:
        """Start this boundary's values on their way to the host; the record is written when they
        are read (``_settle_lagged``). Nothing here waits for the GPU."""
        s, c = self.state, self.control
        values: dict = {}
        host: dict = {}
        logged = c.should_log and s.global_step > self._globalstep_last_logged
        if logged:
            values["loss"] = tr_loss
            values["grad_norm"] = grad_norm
            values["tokens"], self._pending_tokens = self._pending_tokens, 0
            sums, self._metric_sums["train"] = self._metric_sums["train"], {}
            values.update({f"sum_{k}": v for k, v in sums.items()})
            host = {
                "steps": s.global_step - self._globalstep_last_logged,
                "learning_rate": learning_rate,
                "start_time": start_time,
            }
            self._globalstep_last_logged = s.global_step
            self.store_flos()
            c.should_log = False
        verdicts = self.guard.nan.take_pending() if self.guard is not None else []
        for i, (step, ok, loss, norm) in enumerate(verdicts):
            values.update({f"nan{i}_ok": ok, f"nan{i}_loss": loss, f"nan{i}_norm": norm})
            host[f"nan{i}_step"] = step
        host["verdicts"] = len(verdicts)
        if values:
            self._lagged = step_lag.Lagged.take(s.global_step, s.epoch, values, host)
        if logged:
            tr_loss.zero_()  # after its copy is queued; unlike `-=`, a NaN does not outlive its record

    def _settle_lagged(self) -> None:
        """Write the lagged boundary's record (its NaN verdicts first, as a boundary read at once
        writes them): on the next step, once its optimizer step is queued, or before anything
        that must follow it."""
        lag, self._lagged = self._lagged, None
        if lag is None:
            return
        v = lag.read()
        verdicts = [
            (v[f"nan{i}_step"], v[f"nan{i}_ok"], v[f"nan{i}_loss"], v[f"nan{i}_norm"])
            for i in range(v.get("verdicts", 0))
        ]
        if verdicts:
            self.guard.settle(self, verdicts)
        if "loss" not in v:
            return
        s, c = self.state, self.control
        now, want = (s.global_step, s.epoch), c.should_log
        s.global_step, s.epoch = lag.step, lag.epoch  # the record is the lagged step's
        self._record_at = lag.at
        try:
            s.num_input_tokens_seen += int(v["tokens"])
            self._total_loss_scalar += v["loss"]
            logs = {"loss": v["loss"] / v["steps"]}
            if v.get("grad_norm") is not None:
                logs["grad_norm"] = v["grad_norm"]
            logs["learning_rate"] = v["learning_rate"]
            sums = {k[4:]: x for k, x in v.items() if k.startswith("sum_")}
            self._write_log(logs, "train", sums, v["start_time"])
        finally:
            s.global_step, s.epoch = now
            c.should_log = want  # on_log cleared it: this boundary's own choice stands
            self._record_at = None

    def record_time(self) -> float:
        """When the step being recorded ended, as the host saw it: a lagged record's is the time
        its values were taken, not the time they were read a step later."""
        return self._record_at if self._record_at is not None else time.time()

    def _save_checkpoint(self, model, trial):
        self._settle_lagged()
        # Tokens counted since the last log belong in the saved state, so a resume counts exactly.
        self._flush_tokens()
        if self.guard is None:
            super()._save_checkpoint(model, trial)
        else:  # free space checked first; a save that runs out of space is removed and retried
            self.guard.save_checkpoint(
                self, lambda: super(LeviathanTrainer, self)._save_checkpoint(model, trial)
            )

    # -- the guard's hooks (engine/train/guard/core.py); each is a None check without one -----------

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        if self.guard is not None:
            self.guard.on_batches(self, batches, num_items)
        return batches, num_items

    offload_activations = False  # gradient_checkpointing: offload (set by engine.train.build)

    def training_step(self, model, inputs, num_items_in_batch=None):
        # With checkpointing, what autograd saves is mostly each layer's input: kept in pinned CPU
        # memory until the backward pass needs it (Axolotl's `gradient_checkpointing: offload`).
        offload = torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available())
        with offload if self.offload_activations else _nothing():
            if self.guard is None:
                return super().training_step(model, inputs, num_items_in_batch)
            return self.guard.training_step(self, super().training_step, model, inputs, num_items_in_batch)

    def _get_grad_norm(self, model, grad_norm=None):
        grad_norm = super()._get_grad_norm(model, grad_norm)
        if self.guard is not None and model.training:
            self.guard.check_step(self, model, grad_norm)
        return grad_norm

    def _maybe_log_save_evaluate(
        self, tr_loss, grad_norm, model, trial, epoch, ignore_keys_for_eval, start_time, learning_rate=None
    ):
        self._settle_lagged()  # (the epoch's last boundary, or one no optimizer step followed)
        if learning_rate is not None and self._lag_now():  # (the loop hands the step's rate over)
            self._lag(tr_loss, grad_norm, start_time, learning_rate)
        elif self.guard is not None:
            self.guard.settle(self)  # the verdicts now: a halt decides what this boundary saves
        args = (grad_norm, model, trial, epoch, ignore_keys_for_eval, start_time)
        while True:
            super()._maybe_log_save_evaluate(tr_loss, *args, learning_rate=learning_rate)
            if self.guard is not None:
                self.guard.after_log(self)
            # Paused here, at the step boundary, once its record is written; a save or an eval
            # asked while paused runs at once (this boundary again), then the pause goes on.
            if self.hold is None or not self.hold(self):
                return

    def _run_epoch(self, *args, **kwargs):
        # transformers checks max_steps only after a step: resumed from a checkpoint at the last
        # step (a run stopped there, or the same command run again) it would train one past it.
        if 0 < self.state.max_steps <= self.state.global_step:
            self.control.should_training_stop = True
            return None
        try:
            result = super()._run_epoch(*args, **kwargs)
        except BaseException:
            # The last finished step's record, where it can still be read; the error is the news.
            with contextlib.suppress(Exception):
                self._settle_lagged()
            raise
        self._settle_lagged()
        return result

    def prediction_step(self, model, inputs, *args, **kwargs):
        if self.guard is not None:
            from engine import faults

            faults.in_phase("eval", self.state.global_step)
        return super().prediction_step(model, inputs, *args, **kwargs)

    def _save_optimizer_and_scheduler(self, output_dir):
        if self.guard is not None:
            from engine import faults

            faults.on_save_write(output_dir, self.state.global_step)
        super()._save_optimizer_and_scheduler(output_dir)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        # The loaded optimizer and schedule carry the checkpoint's rates: one place sets this
        # run's (engine.train.learning_rate), from this run's schedule and the guard's factor.
        factor, saved_lr = self.guard.nan.lr_factor(checkpoint) if self.guard is not None else (1.0, None)
        resume_learning_rate(self.optimizer, self.lr_scheduler, factor)
        if self.guard is not None:
            self.guard.after_load(self, checkpoint, factor, saved_lr)


class _SettleLagged(TrainerCallback):
    """Writes a lagged step's record once the next step's optimizer step is queued: its values
    have arrived by then, and the record comes before anything of the new step's boundary."""

    def __init__(self, trainer: LeviathanTrainer) -> None:
        self.trainer = weakref.ref(trainer)

    def on_optimizer_step(self, args, state, control, **kwargs):
        trainer = self.trainer()
        if trainer is not None:
            trainer._settle_lagged()
