"""Out of memory: a step whose micro-batch runs out of device memory runs again at half size.

``torch.OutOfMemoryError`` in a micro-batch: its gradients so far are dropped, memory is freed,
and the step is run again from its first micro-batch with each micro-batch cut in two (at a
document boundary when packed): half the micro batch, twice the accumulation, the same samples
and effective batch, the same step counter. The new values go to the run state
(``leviathan-state.json``) so a resume builds the trainer with them, and an alert ``oom`` tells
the operator.
"""

from __future__ import annotations

import gc

import torch

from engine.errors import UserError
from engine.run import runstate

OOM_ADVICE = (
    "turn gradient_checkpointing on, lower sequence_len or micro_batch_size, or use adapter: qlora "
    "(guide: micro_batch_size: 1, gradient_accumulation_steps: 16)"
)


class _CannotSplit(Exception):
    pass


def split_batch(batch: dict, pieces: int) -> list[dict] | None:
    """``batch`` cut into ``pieces`` smaller batches with the same tokens, or None if it cannot be.

    A padding-free batch (one row of packed documents with ``cu_seq_lens_q``) is cut at the
    document boundaries nearest to equal token counts; documents never attend to each other
    and a document's first label is already masked, so the pieces' losses sum to the
    batch's. A padded batch is cut along its rows.
    """
    ids = batch["input_ids"]
    if "cu_seq_lens_q" in batch and ids.shape[0] == 1:
        return _split_packed(batch, pieces)
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


def _split_packed(batch: dict, pieces: int) -> list[dict] | None:
    ids = batch["input_ids"]
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


def is_oom(exc: BaseException) -> bool:
    """Out of device memory, as the caching allocator or a library (cuBLAS, cuDNN) reports it."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        s in text for s in ("CUDA out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED")
    )


class MicroBatches:
    """The micro-batches of the optimizer step in progress, run through the model; on OOM, the
    whole step again with each micro-batch cut in two. Sums the step's loss for the NaN check."""

    def __init__(self, guard) -> None:
        self.g = guard
        self.splits = 1  # pieces each micro-batch of the dataloader is cut into (after OOM)
        self.new_step()

    def new_step(self) -> None:
        self.loss = None
        self.batches: list = []
        self.num_items = None
        self.micro = 0
        self.metric_snapshot: dict | None = None

    def take_loss(self):
        """The step's summed (detached) loss, handed over once."""
        loss, self.loss = self.loss, None
        return loss

    def on_batches(self, trainer, batches: list, num_items) -> None:
        """The micro-batches of the coming optimizer step (kept to run it again after an OOM)."""
        self.new_step()
        self.batches, self.num_items = batches, num_items
        if self.g.c.oom_retry:
            # _add_metric replaces its tensors, so a shallow copy is a snapshot of the step's start.
            self.metric_snapshot = dict(trainer._metric_sums["train"])

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
        index = self.micro
        self.micro += 1
        redo = False
        while True:
            try:
                if redo:
                    self.loss = None
                    for earlier in self.batches[:index]:
                        self._add_loss(self._pieces(step_fn, model, earlier, num_items))
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
        self._add_loss(loss)
        return loss

    def _add_loss(self, loss) -> None:
        self.loss = loss.detach() if self.loss is None else self.loss + loss.detach()

    def _halve(self, trainer, model, message: str) -> None:
        g = self.g
        step = trainer.state.global_step + 1
        model.zero_grad(set_to_none=True)
        from engine.model.lora_autocast import forget

        forget(model)  # sibling products the failed forward left held (and its graph with them)
        if self.metric_snapshot is not None:
            trainer._metric_sums["train"] = dict(self.metric_snapshot)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        base_micro = trainer.args.per_device_train_batch_size
        base_accum = trainer.args.gradient_accumulation_steps
        micro, accum = base_micro // self.splits, base_accum * self.splits
        world = trainer.accelerator.num_processes
        if not g.c.oom_retry or world > 1 or micro < 2 or micro % 2:
            self._refuse(step, micro, accum, world, message)
        self.splits *= 2
        new_micro, new_accum = base_micro // self.splits, base_accum * self.splits
        g.state.micro_batch_size, g.state.gradient_accumulation_steps = new_micro, new_accum
        if g.state.derived_from is None:
            g.state.derived_from = [g.config.micro_batch_size, g.config.gradient_accumulation_steps]
        g.state.record(
            step,
            "oom",
            message,
            micro_batch_size=[micro, new_micro],
            gradient_accumulation_steps=[accum, new_accum],
        )
        g.save_state()
        g.alert(
            "oom",
            "warning",
            step,
            message=f"out of memory at step {step} (micro batch {micro} x accumulation {accum}): the step "
            f"runs again with micro batch {new_micro} x accumulation {new_accum}, the same effective batch "
            f"of {micro * accum} ({message})",
            advice="nothing to do: the run goes on at the smaller micro batch, after a resume too "
            f"(kept in {runstate.path_in(g.output_dir)}); for a new run set micro_batch_size: {new_micro} "
            f"and gradient_accumulation_steps: {new_accum}",
            micro_batch_size=new_micro,
            gradient_accumulation_steps=new_accum,
        )

    def _refuse(self, step: int, micro: int, accum: int, world: int, message: str) -> None:
        """No retry at half size (off, several processes, or no even micro batch left): exit 2."""
        g = self.g
        why = (
            "guard.oom_retry is off"
            if not g.c.oom_retry
            else "retrying is for single-GPU runs"
            if world > 1
            else f"micro batch {micro} cannot be halved to the same effective batch"
        )
        g.alert(
            "oom",
            "critical",
            step,
            message=f"out of memory at step {step} with micro batch {micro}: {why} ({message})",
            advice=OOM_ADVICE,
        )
        raise UserError(
            f"out of memory at step {step} with micro batch {micro} x accumulation {accum} "
            f"(sequence_len {g.config.sequence_len}): {why}",
            OOM_ADVICE,
        )
