"""TRL's SFTTrainer with the per-micro-batch host syncs taken out.

TRL computes its entropy / token-accuracy metrics and token counts with ``.item()`` on every
micro-batch, and Trainer counts input tokens the same way: each call drains the GPU queue
and leaves it idle while Python launches the next kernels. Here the same numbers are kept
as device tensors and read once per logging step. The loss is TRL's own: the fused LM head
(per-token log-probs in chunks, never the full logits), summed over the labelled tokens.
"""

from __future__ import annotations

import contextlib

import torch
from trl import SFTTrainer

from engine.train.learning_rate import resume_learning_rate

_nothing = contextlib.nullcontext


class LeviathanTrainer(SFTTrainer):
    guard = None  # engine.train.guard.Guard, attached by engine.train.train: NaN/OOM/disk handling
    hold = None  # engine.train.callback.CockpitCallback.hold: the pause at a step boundary

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._pending_tokens: torch.Tensor | int = 0
        self._metric_sums: dict[str, dict[str, torch.Tensor]] = {"train": {}, "eval": {}}

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
        self._flush_tokens()
        mode = "train" if self.model.training else "eval"
        sums = self._metric_sums[mode]
        if sums:
            valid = float(self.accelerator.gather(sums["valid"].reshape(1)).sum().item()) or 1.0
            entropy = float(self.accelerator.gather(sums["entropy"].reshape(1)).sum().item())
            correct = float(self.accelerator.gather(sums["correct"].reshape(1)).sum().item())
            prefix = "eval_" if mode == "eval" else ""
            logs[f"{prefix}entropy"] = entropy / valid
            logs[f"{prefix}mean_token_accuracy"] = correct / valid
            sums.clear()
        if mode == "eval" and self.eval_categories is not None and "eval_loss" in logs:
            from engine.train.eval_categories import KEY

            logs[KEY] = self.eval_categories.take(self.accelerator.gather)
        self._metrics[mode].clear()
        super().log(logs, start_time)

    def _save_checkpoint(self, model, trial):
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

    def _maybe_log_save_evaluate(self, tr_loss, *args, **kwargs):
        while True:
            super()._maybe_log_save_evaluate(tr_loss, *args, **kwargs)
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
        return super()._run_epoch(*args, **kwargs)

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
