"""TRL's SFTTrainer with the per-micro-batch host syncs taken out.

TRL computes its entropy / token-accuracy metrics and token counts with ``.item()`` on every
micro-batch, and Trainer counts input tokens the same way: each call drains the GPU queue
and leaves it idle while Python launches the next kernels. Here the same numbers are kept
as device tensors and read once per logging step. The loss is TRL's own: the fused LM head
(per-token log-probs in chunks, never the full logits), summed over the labelled tokens.
"""

from __future__ import annotations

import torch
from trl import SFTTrainer


class LeviathanTrainer(SFTTrainer):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._pending_tokens: torch.Tensor | int = 0
        self._metric_sums: dict[str, dict[str, torch.Tensor]] = {"train": {}, "eval": {}}

    def _add_metric(self, mode: str, name: str, value: torch.Tensor) -> None:
        sums = self._metric_sums[mode]
        sums[name] = sums[name] + value.detach() if name in sums else value.detach().clone()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
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
        self._metrics[mode].clear()
        super().log(logs, start_time)

    def _save_checkpoint(self, model, trial):
        # Tokens counted since the last log belong in the saved state, so a resume counts exactly.
        self._flush_tokens()
        super()._save_checkpoint(model, trial)
