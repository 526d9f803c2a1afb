"""Trainer arguments that come from Axolotl's keys: intervals per epoch, optimizer settings,
TF32, evaluation packing, Liger kernels; plus the machine check for 8-/4-bit optimizers.

Kept apart from ``build.sft_config`` so each key's translation reads in one place.
"""

from __future__ import annotations

from engine.errors import UserError

# A ratio just below 1: Trainer reads a step interval < 1 as a fraction of all steps
# (ceil(max_steps x ratio)), while 1.0 would mean "every step".
WHOLE_RUN = 0.999999


def per_epoch(steps: int | None, per: int | None, num_epochs: float, max_steps: int | None) -> float | None:
    """A step interval: given as steps, or ``per`` times an epoch (Axolotl: a fraction of the run,
    1 / (per x num_epochs)); None: never."""
    if steps is not None:
        return steps
    if not per:
        return None
    epochs = 1.0 if max_steps else num_epochs  # with max_steps, Axolotl counts the run as one epoch
    return min(WHOLE_RUN, 1.0 / (per * epochs))


def tf32_arg(choice) -> bool | None:
    """True/False for Trainer's ``tf32``; None leaves torch's setting (no GPU, or one without TF32)."""
    import torch

    if not torch.cuda.is_available() or torch.cuda.get_device_capability(0)[0] < 8:
        return None
    return choice is not False


def liger_args(config, available: bool) -> dict:
    if not available:
        return {"use_liger_kernel": False}
    if config.liger_kernels is None:
        return {"use_liger_kernel": True}
    chosen = {k: v for k, v in config.liger_kernels.items()}
    return {"use_liger_kernel": any(chosen.values()), "liger_kernel_config": chosen}


def axolotl_args(config, has_val: bool, liger: bool) -> dict:
    """SFTConfig keyword arguments that Axolotl's keys decide."""
    save = per_epoch(config.save_steps, config.saves_per_epoch, config.num_epochs, config.max_steps)
    if config.saves_per_epoch == 0 and config.save_steps is None:
        save = None
    evals = per_epoch(config.eval_steps, config.evals_per_epoch, config.num_epochs, config.max_steps)
    out = dict(
        eval_strategy="steps" if (has_val and evals) else "no",
        eval_steps=evals,
        save_strategy="steps" if save else "no",
        save_steps=save or 500,
        per_device_eval_batch_size=config.eval_batch_size or config.micro_batch_size,
        tf32=tf32_arg(config.tf32),
        **liger_args(config, liger),
    )
    if config.early_stopping_patience:  # Trainer keeps state.best_metric, which early stopping reads
        out.update(metric_for_best_model="eval_loss", greater_is_better=False)
    if config.sample_packing and config.eval_sample_packing is False:
        out["eval_packing"] = False
    for ours, theirs in (
        ("adam_beta1", "adam_beta1"),
        ("adam_beta2", "adam_beta2"),
        ("adam_epsilon", "adam_epsilon"),
    ):
        if getattr(config, ours) is not None:
            out[theirs] = getattr(config, ours)
    if config.cosine_min_lr_ratio is not None and config.lr_scheduler == "cosine":
        out["lr_scheduler_type"] = "cosine_with_min_lr"
        out["lr_scheduler_kwargs"] = {"min_lr_rate": config.cosine_min_lr_ratio}
    return out


def check_optimizer(config) -> None:
    """Refuse, before anything loads, an optimizer this machine cannot run."""
    from engine.config.optimizers import needs

    missing = needs(config.optimizer)
    if missing:
        raise UserError(
            f"{missing}",
            "run on a CUDA machine with that package, or use `optimizer: adamw_torch_fused` here",
        )
