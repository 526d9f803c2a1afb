"""The training keys of the run config: preparing the data (length, packing, bad rows, the
prepared-data cache), the optimization (batch, epochs, learning rate and its schedule, the
optimizer), evaluation and checkpoints, and where the output goes. A part of ``RunConfig``
(``engine.config.config``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator

from engine.config.config_datasets import PathText


class TrainingKeys(BaseModel):
    """Data preparation, optimization, evaluation and checkpoints, the output folder."""

    sequence_len: int = Field(2048, gt=8)
    sample_packing: bool = True
    too_long: Literal["truncate", "drop"] = "truncate"
    """What to do with an example longer than sequence_len."""
    skip_bad_rows: bool = False
    """False: bad rows stop the run with their file:line list. True: skip and log them."""
    dataset_prepared_path: PathText | None = None
    """Where prepared (tokenized, masked, packed) data is kept and reused by every start and
    resume (default: ``<output_dir>/prepared-data``); rebuilt when the data, tokenizer, template
    or these options change."""
    dataset_processes: int | None = Field(None, gt=0)
    """Processes that prepare the data (default: every core)."""
    dataset_num_proc: int | None = Field(None, gt=0)
    """The same as dataset_processes (Axolotl's newer name); dataset_processes wins."""

    micro_batch_size: int = Field(1, gt=0)
    gradient_accumulation_steps: int = Field(1, gt=0)
    num_epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, gt=0)
    learning_rate: float = Field(2e-4, gt=0)
    lr_scheduler: Literal[
        "cosine", "linear", "constant", "constant_with_warmup", "cosine_with_min_lr", "inverse_sqrt"
    ] = "cosine"
    warmup_steps: int | None = Field(None, ge=0)
    warmup_ratio: float | None = Field(None, ge=0, le=1)
    optimizer: str = "adamw_torch_fused"
    """adamw_torch(_fused), adafactor, sgd; 8-bit and 4-bit ones (adamw_bnb_8bit, adamw_8bit,
    paged_adamw_8bit, adamw_torch_8bit, adamw_torch_4bit, lion_8bit, ...) where their library
    (bitsandbytes, torchao) and a CUDA GPU are there (engine/config/optimizers.py)."""
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, ge=0)
    gradient_checkpointing: bool | Literal["auto", "offload"] = "auto"
    """auto: off when the memory estimate fits the GPU, on otherwise (the choice is logged).
    offload: on, and the checkpointed activations wait in CPU memory for the backward pass."""
    bf16: bool | Literal["auto"] = "auto"
    tf32: bool | Literal["auto"] = "auto"
    """TF32 matmuls on GPUs that have them (auto, true); false: full fp32 matmuls."""
    adam_beta1: float | None = Field(None, gt=0, lt=1)
    adam_beta2: float | None = Field(None, gt=0, lt=1)
    adam_epsilon: float | None = Field(None, gt=0)
    cosine_min_lr_ratio: float | None = Field(None, ge=0, le=1)
    """cosine: end at this fraction of learning_rate instead of 0."""

    val_set_size: float = Field(0.0, ge=0)
    """A fraction (< 1) or a number of rows (>= 1) held out for evaluation, seeded."""
    eval_steps: int | None = Field(None, gt=0)
    save_steps: int | None = Field(None, gt=0)
    evals_per_epoch: int | None = Field(None, ge=0)
    """Evaluations per epoch (0: none); sets eval_steps from the epoch's step count."""
    saves_per_epoch: int | None = Field(None, ge=0)
    """Checkpoints per epoch (0: none); sets save_steps from the epoch's step count."""
    eval_batch_size: int | None = Field(None, gt=0)
    """Micro batch size for evaluation (default micro_batch_size)."""
    eval_sample_packing: bool | None = None
    """Pack the evaluation rows (default: as sample_packing)."""
    resume_from_checkpoint: str | None = None
    """Resume from this checkpoint folder (the same as ``--resume PATH``)."""
    loss_watchdog_threshold: float | None = Field(None, gt=0)
    """Stop the run (status diverged) when the train loss stays above this ..."""
    loss_watchdog_patience: int | None = Field(None, gt=0)
    """... for this many logged steps in a row (default 3, as Axolotl)."""
    early_stopping_patience: int | None = Field(None, ge=0)
    """Stop when eval_loss has not improved for this many evaluations in a row (transformers'
    EarlyStoppingCallback, as Axolotl uses it): the run saves, keeps its best checkpoint and
    ends with status early_stopped. Needs val_set_size and an eval interval; 0 or unset: off."""
    early_stopping_threshold: float = Field(0.0, ge=0)
    """An evaluation improves only when eval_loss drops below the best so far by more than this."""
    logging_steps: int = Field(1, gt=0)
    save_total_limit: int | None = Field(None, gt=0)
    output_dir: PathText = "./outputs/run"
    seed: int = 42

    @field_validator("optimizer")
    @classmethod
    def _optimizer(cls, v: str) -> str:
        from engine.config.optimizers import OPTIMIZERS

        if v not in OPTIMIZERS:
            raise ValueError(f"optimizer {v!r} is not one of {', '.join(OPTIMIZERS)}")
        return v

    @field_validator("val_set_size")
    @classmethod
    def _whole_count(cls, v: float) -> float:
        if v >= 1 and v != int(v):
            raise ValueError("a count of rows must be a whole number (or use a fraction below 1)")
        return v
