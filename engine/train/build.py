"""The trainer a run trains with: TRL's ``SFTConfig`` from the run config, and our
``SFTTrainer`` subclass over the prepared data with our callbacks (a curriculum's too).

Imports torch and TRL only when called, so that ``leviathan-cockpit --help`` stays quick.
"""

from __future__ import annotations

import os

from engine.config.config import RunConfig
from engine.train import dist


def liger_available() -> bool:
    import importlib.util

    import torch

    return torch.cuda.is_available() and importlib.util.find_spec("liger_kernel") is not None


def sft_config(config: RunConfig, has_val: bool, output_dir, gc: bool, bf16: bool):
    """TRL's ``SFTConfig`` for the run: our keys, Axolotl's (trainer_args), several processes' (dist)."""
    from trl import SFTConfig

    from engine.train.trainer_args import axolotl_args

    warmup = config.warmup_steps if config.warmup_steps is not None else 0
    args = SFTConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=config.micro_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        num_train_epochs=config.num_epochs,
        max_steps=config.max_steps or -1,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=warmup if config.warmup_ratio is None else config.warmup_ratio,
        optim=_optim(config.optimizer),
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        gradient_checkpointing=gc,
        gradient_checkpointing_kwargs={"use_reentrant": False} if gc else None,
        bf16=bf16,
        save_total_limit=None,  # retention is ours: it knows which folders are complete
        logging_steps=config.logging_steps,
        logging_nan_inf_filter=False,  # a NaN loss must show, not be averaged away
        seed=config.seed,
        data_seed=config.seed,
        report_to=[],
        disable_tqdm=True,
        packing=config.sample_packing,
        packing_strategy="bfd",
        padding_free=config.sample_packing,
        max_length=config.sequence_len,
        include_num_input_tokens_seen="non_padding",
        **_loader_workers(),
        dataset_kwargs={"skip_prepare_dataset": True},  # prepared once, under dataset_prepared_path
        remove_unused_columns=False,
        save_only_model=False,
        use_cpu=not _cuda(),
        # Batches go to the GPU from pinned memory without the host waiting: a plain copy syncs
        # the stream, so each step would start on an idle GPU.
        dataloader_pin_memory=True,
        accelerator_config={"non_blocking": _cuda()},
        # Liger's RMSNorm/SwiGLU/RoPE kernels (as the config's liger_* keys choose), intervals
        # per epoch, optimizer settings, TF32, eval packing: engine/train/trainer_args.py.
        **axolotl_args(config, has_val, liger_available()),
        **dist.trainer_args(config),  # DDP settings; DeepSpeed or FSDP when configured
    )
    if dist.world_size() == 1 and args.n_gpu > 1:
        # One process sees several GPUs: Trainer would wrap the model in nn.DataParallel (which
        # TRL refuses, and which is slower than DDP). Train on the first; --nproc N uses them all.
        args._n_gpu = 1
    return args


WORKERS_ENV = "LEVIATHAN_DATALOADER_WORKERS"  # batches made in N worker processes ahead of the step


def _loader_workers() -> dict:
    n = int(os.environ.get(WORKERS_ENV) or 0)
    if n <= 0:
        return {"dataloader_num_workers": 0}
    return {
        "dataloader_num_workers": n,
        "dataloader_prefetch_factor": 2,
        "dataloader_persistent_workers": True,
    }


def build_trainer(config: RunConfig, prepared, model, tokenizer, callback, paths, gc: bool, bf16: bool):
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from engine.train.trainer import LeviathanTrainer

    args = sft_config(config, prepared.val is not None, paths.output_dir, gc, bf16)
    trainer_cls, callbacks = LeviathanTrainer, [callback]
    # The prepared views (engine.data.packview): packed as planned at preparation, labels built per batch.
    train_dataset = prepared.view("train", config.sample_packing)
    if config.curriculum is not None:  # phases by category: a sampler over the training set
        from engine.train.curriculum_trainer import curriculum_setup

        trainer_cls, callbacks, train_dataset = curriculum_setup(config, prepared, callback)
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=prepared.train,  # TRL wants a datasets.Dataset here; it reads the views below
        eval_dataset=prepared.val,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.train_dataset = train_dataset
    if prepared.val is not None:
        from engine.train.eval_categories import CategoryCollator, CategorySums

        names: list[str] = []  # the eval loss per _category, in the same pass (eval_categories.py)
        trainer.eval_dataset = prepared.view("val", config.sample_packing, categories=names)
        trainer.eval_categories = CategorySums(names)
        trainer.data_collator = CategoryCollator(trainer.data_collator)
    # Our run log and progress line replace the trainer's own printing.
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.offload_activations = gc and config.gradient_checkpointing == "offload"
    return trainer


def _optim(name: str) -> str:
    # torch's fused AdamW runs on the CPU too (the NaN guard's device-side skip needs it fused).
    return {"adamw_8bit": "adamw_bnb_8bit"}.get(name, name)  # bitsandbytes' AdamW8bit either way


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
