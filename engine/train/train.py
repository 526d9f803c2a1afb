"""One fine-tuning run: config -> data -> model + LoRA -> SFTTrainer, with a run log.

Reads like a script: ``run`` sets up the run folder, prepares data, loads the model, and
hands everything to TRL's ``SFTTrainer`` with our one callback. It runs the same in every
process that trains: the one the cockpit starts (``engine.cli.launcher``; the UI runs in another
process and follows the run log), ``train --headless``, or each rank under ``accelerate launch``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from engine.config.config import RunConfig, dump_resolved
from engine.data import datafp
from engine.errors import UserError
from engine.run import checkpoints, runstate
from engine.run.control import Controls
from engine.run.events import Listener, RunLog
from engine.run.rundir import RunDir
from engine.run.runlock import OutputLock, RunLock
from engine.train import dist
from engine.train.health import watch_run
from engine.train.preflight import check_setup


@dataclass
class RunPaths:
    run_dir: Path
    output_dir: Path

    @property
    def events(self) -> Path:
        return RunDir(self.run_dir).events


def run_paths(config: RunConfig, run_name: str | None = None, logs_dir: str | None = None) -> RunPaths:
    name = run_name or config.run_name or Path(config.output_dir).name or "run"
    return RunPaths(Path(logs_dir or config.logs_dir) / name, Path(config.output_dir))


# Keys whose change makes an old checkpoint meaningless for this run.
FINGERPRINT_KEYS = (
    "base_model",
    "adapter",
    "lora_r",
    "lora_alpha",
    "lora_target_linear",
    "lora_target_modules",
    "load_in_4bit",
    "load_in_8bit",
    "sequence_len",
    "sample_packing",
    "seed",
    "micro_batch_size",
    "gradient_accumulation_steps",
    "datasets",
    "val_set_size",
    "train_on_inputs",
    "curriculum",
)


def fingerprint(config: RunConfig) -> dict:
    d = config.model_dump(mode="json")
    return {k: d[k] for k in FINGERPRINT_KEYS}


@dataclass
class RunResult:
    status: str
    step: int = 0
    run_dir: Path | None = None
    last_checkpoint: str | None = None
    extra: dict = field(default_factory=dict)


def _resume_point(resume: str, paths: RunPaths, log: RunLog) -> checkpoints.Checkpoint | None:
    found = checkpoints.classify(paths.output_dir)
    for old, new in checkpoints.set_aside_torn(paths.output_dir, found.torn):
        log.emit(
            "alert",
            rule="torn_checkpoint",
            level="warning",
            message=f"{old} was incomplete (killed while this engine saved or removed it): moved to "
            f"{new}, which is deleted at the next complete save",
            advice="nothing to do: the run resumes from the newest complete checkpoint",
        )
    for f in found.foreign:
        log.emit(
            "alert",
            rule="foreign_checkpoint",
            level="warning",
            message=f"{f}: {checkpoints.why_foreign(f)}; left where it is, not resumed from",
            advice="nothing to do; resume uses the newest checkpoint with a readable leviathan.json "
            "(move that folder out of output_dir when you no longer need it there)",
        )
    if resume == "never":
        return None
    if resume == "auto":
        return _newest_sound(found.complete, log)
    p = Path(resume)
    if checkpoints.kind_of(p) != "complete":
        raise UserError(
            f"{resume}: not a complete checkpoint folder",
            "use --resume auto, never, or a checkpoint-N folder",
        )
    step = int(p.name.rsplit("-", 1)[-1]) if "-" in p.name else 0
    ckpt = checkpoints.Checkpoint(p, step, json.loads((p / checkpoints.MARKER).read_text()))
    problems = checkpoints.verify(ckpt)
    if problems:
        raise UserError(
            f"{p}: its files are not as saved: " + "; ".join(problems),
            "resume from another checkpoint (--resume auto picks the newest sound one)",
        )
    return ckpt


def _newest_sound(complete: list[checkpoints.Checkpoint], log: RunLog) -> checkpoints.Checkpoint | None:
    """The newest checkpoint whose files are as saved (size and SHA-256 in its marker). A damaged
    one is renamed ``checkpoint-N.corrupt`` (kept, but no longer a checkpoint to resume from or to
    count in retention) and named in an alert."""
    for c in reversed(complete):
        problems = checkpoints.verify(c)
        if not problems:
            return c
        dest = checkpoints.set_aside(c.path, "corrupt")
        older = next((o for o in reversed(complete) if o.step < c.step), None)
        log.emit(
            "alert",
            rule="corrupt_checkpoint",
            level="critical",
            step=c.step,
            message=f"{c.path}: "
            + "; ".join(problems)
            + f". Renamed to {dest.name}; resuming from "
            + (f"checkpoint-{older.step} if it is sound" if older else "the start (no older checkpoint)"),
            advice="check that disk (a file changed after it was written); delete the .corrupt folder "
            "when you have looked at it",
        )
    return None


def _check_compatible(ckpt: checkpoints.Checkpoint, config: RunConfig) -> None:
    old = ckpt.meta.get("fingerprint")
    if not old:
        return
    new = fingerprint(config)
    if isinstance(old.get("datasets"), list):  # dataset keys added since then read as their defaults
        old = {**old, "datasets": [_with_spec_defaults(d) for d in old["datasets"]]}
    diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in new if old.get(k) != new.get(k)]
    if diffs:
        raise UserError(
            f"{ckpt.path} was trained with a different config:\n  " + "\n  ".join(diffs),
            "restore those keys, use --resume never with a new output_dir, or --resume PATH of a matching run",
        )


def _with_spec_defaults(d):
    from engine.config.config import DatasetSpec

    if not isinstance(d, dict):
        return d
    fields = DatasetSpec.model_fields
    return {**{k: f.default for k, f in fields.items() if not f.is_required()}, **d}


def liger_available() -> bool:
    import importlib.util

    import torch

    return torch.cuda.is_available() and importlib.util.find_spec("liger_kernel") is not None


def build_trainer(
    config: RunConfig, prepared, model, tokenizer, callback, paths: RunPaths, gc: bool, bf16: bool
):
    from trl import SFTConfig

    from engine.train.trainer import LeviathanTrainer
    from engine.train.trainer_args import axolotl_args

    warmup = config.warmup_steps if config.warmup_steps is not None else 0
    args = SFTConfig(
        output_dir=str(paths.output_dir),
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
        dataloader_num_workers=0,
        dataset_kwargs={"skip_prepare_dataset": True},  # prepared once, under dataset_prepared_path
        remove_unused_columns=False,
        save_only_model=False,
        use_cpu=not _cuda(),
        # Liger's RMSNorm/SwiGLU/RoPE kernels (as the config's liger_* keys choose), intervals
        # per epoch, optimizer settings, TF32, eval packing: engine/train/trainer_args.py.
        **axolotl_args(config, prepared.val is not None, liger_available()),
        **dist.trainer_args(config),  # DDP settings; DeepSpeed or FSDP when configured
    )
    if dist.world_size() == 1 and args.n_gpu > 1:
        # One process sees several GPUs: Trainer would wrap the model in nn.DataParallel (which
        # TRL refuses, and which is slower than DDP). Train on the first; --nproc N uses them all.
        args._n_gpu = 1
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

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
        trainer.eval_dataset = prepared.view("val", config.sample_packing)
    # Our run log and progress line replace the trainer's own printing.
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.offload_activations = gc and config.gradient_checkpointing == "offload"
    return trainer


def _optim(name: str) -> str:
    import torch

    if name == "adamw_torch_fused" and not torch.cuda.is_available():
        return "adamw_torch"  # the fused kernel is for accelerators
    return {"adamw_8bit": "adamw_bnb_8bit"}.get(name, name)  # bitsandbytes' AdamW8bit either way


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run(
    config: RunConfig,
    *,
    controls: Controls | None = None,
    listeners: list[Listener] | None = None,
    resume: str = "auto",
    run_name: str | None = None,
    logs_dir: str | None = None,
    notes: list[str] | None = None,
    force_fresh: bool = False,
    allow_world_size_change: bool = False,
) -> RunResult:
    """Train to the end (or to a stop); returns how it ended. Raises UserError on bad input."""
    # Packed batches change shape every step; without expandable segments the caching
    # allocator fragments (13 GiB reserved but unusable seen on an 8B run at 80 GB).
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    controls = controls or Controls()
    if config.resume_from_checkpoint and resume == "auto":
        resume = config.resume_from_checkpoint  # Axolotl's key for --resume PATH
    paths = run_paths(config, run_name, logs_dir)
    dist.init(config)  # several processes: join the group first (rank 0 writes, see engine/train/dist.py)
    check_setup(config)  # every problem found before anything is written, at once
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    main = dist.is_main()
    with (
        RunLock(paths.run_dir) if main else contextlib.nullcontext(),
        OutputLock(paths.output_dir, paths.run_dir) if main else contextlib.nullcontext(),
    ):
        log = dist.run_log(paths.events, listeners)  # ranks > 0: a null sink
        # health alerts + GPU samples (every GPU of the host) into the run log, from rank 0
        watch = watch_run(log, config.health) if dist.is_main() else dist.NoWatch()
        try:
            return _run(
                config, controls, log, paths, resume, list(notes or []), force_fresh, allow_world_size_change
            )
        except UserError as e:
            log.emit("end", status="error", message=str(e))
            raise
        except BaseException as e:
            log.emit(
                dist.failure_kind(),  # "end"; under the launcher "rank_error": it writes the end
                status="failed",
                message=f"{type(e).__name__}: {e}",
                traceback=traceback.format_exc()[-4000:],
            )
            raise
        finally:
            watch.stop()
            log.close()


def _run(
    config, controls, log, paths, resume, notes, force_fresh, allow_world_size_change=False
) -> RunResult:
    import torch

    from engine.model import attention
    from engine.model.model import (
        attach_lora,
        check_tokens,
        load_base,
        load_tokenizer,
        pick_dtype,
        resolve_base,
    )
    from engine.train.guard import Guard

    base = resolve_base(config.base_model)
    from engine.train.trainer_args import check_optimizer

    check_optimizer(config)  # an 8-/4-bit optimizer without its library or GPU: exit 2, no traceback
    if config.quant_bits and not torch.cuda.is_available():
        load_base(base, quant_bits=config.quant_bits, dtype=torch.float32)  # raises the clear message
    ckpt = dist.share_from_main(lambda: _resume_point(resume, paths, log))
    if ckpt is None and resume == "never" and checkpoints.scan(paths.output_dir)[0] and not force_fresh:
        raise UserError(
            f"{paths.output_dir} already holds checkpoints and --resume never was given",
            "choose a new output_dir, remove the old checkpoints, or pass --force to train over them",
        )
    if ckpt is None and resume == "never" and force_fresh and dist.is_main():
        # Old checkpoints would outrank the new run's (resume auto picks the highest step): set aside, not deleted.
        moved = checkpoints.supersede(paths.output_dir)
        if moved:
            notes.append(f"--force: the previous checkpoints were moved to {moved}")
    dist.barrier()
    if ckpt is not None:
        _check_compatible(ckpt, config)
        datafp.check_sizes(ckpt.meta.get("data"), [d.path for d in config.datasets], str(ckpt.path))
        notes.append(dist.check_world_size(ckpt, config, allow_world_size_change))
        runstate.record_config_changes(paths.run_dir, config, log)
    # NaN/OOM/disk handling; --resume never starts from a clean run state.
    guard = Guard(config, log, controls, paths.output_dir, fresh=resume == "never" and dist.is_main())
    for note in filter(None, notes):
        log.emit("note", message=note)

    t0 = time.time()
    tokenizer = load_tokenizer(
        base, config.chat_template, config.chat_template_jinja, config.trust_remote_code
    )
    check_tokens(tokenizer, config)
    prepared = _prepare_data(config, tokenizer, log, controls)
    if prepared is None:  # stopped while preparing: nothing half-made is kept; the same command starts again
        log.emit("end", step=ckpt.step if ckpt else 0, status="stopped", phase="prepare")
        return RunResult("stopped", ckpt.step if ckpt else 0, paths.run_dir)
    if ckpt is not None:
        datafp.check_content(ckpt.meta.get("data"), prepared.data, str(ckpt.path))
    if prepared.stats.bad:
        log.emit(
            "alert",
            rule="bad_rows",
            level="warning",
            message=f"{len(prepared.stats.bad)} bad row(s) skipped",
            advice="see `leviathan-cockpit check` for the list",
            rows=[f"{f}:{n}: {why}" for f, n, why in prepared.stats.bad[:200]],
        )
    for note, count in prepared.stats.notes_count.items():  # what the chat template did to rows
        rows = [f"{f}:{n}" for f, n in prepared.stats.notes[note]]
        log.emit("note", message=f"{count} row(s): {note}", rows=rows)
    log.emit(
        "data",
        rows=len(prepared.train),
        val_rows=len(prepared.val) if prepared.val is not None else 0,
        by_category=prepared.stats.rows_by_category,
        truncated=prepared.truncated,
        dropped_too_long=prepared.dropped_too_long,
        no_labels=prepared.no_labels,
        cut_before_tokenizing=prepared.cut,
        too_long=prepared.stats.too_long_count,
        lengths=prepared.stats.percentiles(),
        tokens=prepared.tokens,
        prepared=str(prepared.folder),
        cached=prepared.cached,
        encoded_rows=prepared.encoded_rows,
    )

    dtype = pick_dtype(config.bf16)
    gc, gc_reason = _choose_gc(config)
    from transformers import set_seed

    # LoRA's A matrices are drawn at attach time: seed first so a run is reproducible.
    set_seed(config.seed)
    attn = attention.register() if config.sample_packing else None
    model = load_base(
        base, quant_bits=config.quant_bits, dtype=dtype, trust_remote_code=config.trust_remote_code, attn=attn
    )
    model = attach_lora(model, config, gc)
    trainable, total = _param_counts(model)
    fpt, peak = _mfu_terms(model, config, trainable)
    # run_dir links a checkpoint back to its run (eval results and the checklist live there).
    meta = {
        "base_model": config.base_model,
        "fingerprint": fingerprint(config),
        "data": datafp.for_checkpoint(prepared.data),
        "run_dir": str(paths.run_dir.resolve()),
        **dist.checkpoint_meta(config),
    }
    from engine.evaluate.probes import Probes
    from engine.train.callback import CockpitCallback

    callback = CockpitCallback(
        log,
        controls,
        save_total_limit=config.save_total_limit,
        meta=meta,
        flops_per_token=fpt,
        peak_flops=peak,
        probes=Probes(config, paths.run_dir, log) if config.evaluation.on_save and dist.is_main() else None,
    )
    trainer = build_trainer(
        guard.effective_config(config, ckpt is not None),
        prepared,
        model,
        tokenizer,
        callback,
        paths,
        gc,
        dtype == torch.bfloat16,
    )
    watchdog = None
    if config.loss_watchdog_threshold is not None:
        from engine.train.loss_watchdog import LossWatchdog

        watchdog = LossWatchdog(log, config.loss_watchdog_threshold, config.loss_watchdog_patience)
        trainer.add_callback(watchdog)
    dist.attach(trainer, controls, log, paths.run_dir)  # commands to every rank at the same step
    guard.attach(trainer, callback)
    # Only a start that got this far replaces the run's config (a failed one leaves it as it was).
    if dist.is_main():
        dump_resolved(config, RunDir(paths.run_dir).config)
    log.emit(
        "start",
        step=ckpt.step if ckpt else 0,
        base_model=config.base_model,
        adapter=config.adapter,
        device=_device_name(),
        dtype=str(dtype).replace("torch.", ""),
        gradient_checkpointing=gc,
        gradient_checkpointing_reason=gc_reason,
        axolotl_defaults_differ=config._defaults_differ or None,
        attention=attn or "sdpa",
        liger=liger_available(),
        trainable_params=trainable,
        total_params=total,
        flops_per_token=fpt,
        peak_tflops=round(peak / 1e12, 1) if peak else None,
        max_steps=trainer.state.max_steps or None,
        micro_batch_size=trainer.args.per_device_train_batch_size,  # the run state's after an OOM
        gradient_accumulation_steps=trainer.args.gradient_accumulation_steps,
        **dist.start_fields(config),  # world_size, distributed, ranks (a collective)
        output_dir=str(paths.output_dir),
        setup_s=round(time.time() - t0, 2),
        pid=os.getpid(),
    )
    if ckpt is not None:
        log.emit("resume", step=ckpt.step, from_step=ckpt.step, path=str(ckpt.path))
    guard.train(trainer, ckpt)  # trainer.train, again from a checkpoint after a NaN rollback
    status = guard.status or (watchdog and watchdog.status)
    status = status or ("stopped" if controls.stop.is_set() else callback.status)
    last = checkpoints.latest(paths.output_dir)
    log.emit(
        "end", step=trainer.state.global_step, status=status, checkpoint=str(last.path) if last else None
    )
    return RunResult(status, trainer.state.global_step, paths.run_dir, str(last.path) if last else None)


def _prepare_data(config: RunConfig, tokenizer, log: RunLog, controls: Controls):
    """The prepared data (engine.data.prepare), with ``prepare`` records while it is built; None if stopped.

    Several processes: rank 0 prepares, the others wait and read its result from the cache.
    """
    from engine.data.prepare import Stopped, prepare

    last = [0.0]

    def progress(p) -> None:
        now = time.time()
        if now - last[0] >= 2.0 or p.done_bytes >= p.total_bytes:
            last[0] = now
            log.emit("prepare", **p.rate())

    def build():
        old = Path(config.output_dir) / ".data-cache"  # the per-start caches of earlier versions: stale
        if old.is_dir():
            import shutil

            shutil.rmtree(old, ignore_errors=True)
        log.emit("prepare", rows=0, tokens=0, bytes_done=0, bytes_total=None, started=True)
        return prepare(config, tokenizer, progress=progress, should_stop=controls.stop.is_set)

    held: list = []

    def on_main() -> str | None:
        try:
            held.append(build())
        except Stopped:
            return None
        return str(held[0].folder)

    if dist.share_from_main(on_main) is None:
        return None
    prepared = held[0] if held else prepare(config, tokenizer)  # ranks > 0: rank 0's, from the cache
    log.emit(
        "prepare",
        done=True,
        cached=prepared.cached,
        rows=len(prepared.train) + (len(prepared.val) if prepared.val is not None else 0),
        tokens=prepared.tokens,
        path=str(prepared.folder),
    )
    return prepared


def _choose_gc(config: RunConfig) -> tuple[bool, str]:
    """Gradient checkpointing: as configured, or off when the memory estimate fits the GPU."""
    import torch

    if config.gradient_checkpointing != "auto":
        return bool(config.gradient_checkpointing), "set in config"
    if not torch.cuda.is_available():
        return False, "auto: no GPU, memory is not the limit"
    from engine.model.memory import needs_checkpointing

    on, need, free = needs_checkpointing(config, liger_available())
    verdict = "on" if on else "off"
    return on, f"auto: ~{need / 2**30:.1f} GiB needed without it, {free / 2**30:.1f} GiB free -> {verdict}"


def _mfu_terms(model, config: RunConfig, lora_params: int) -> tuple[float, float | None]:
    """FLOPs per token (LoRA convention) and the device's measured bf16 matmul ceiling."""
    from engine.model.mfu import flops_per_token, matmul_ceiling

    return flops_per_token(model.config, lora_params, config.sequence_len), matmul_ceiling()


def _param_counts(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def _device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return "cpu"


def config_hash(config: RunConfig) -> str:
    return hashlib.sha1(json.dumps(fingerprint(config), sort_keys=True).encode()).hexdigest()[:12]
