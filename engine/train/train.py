"""One fine-tuning run: config -> data -> model + LoRA -> SFTTrainer, with a run log.

Reads like a script: ``run`` holds the run folder's locks and its log; ``_run`` is the recipe,
a step a line: the machine checks, the resume point (engine/train/resume.py), the prepared data,
the model with LoRA, TRL's ``SFTTrainer`` (engine/train/build.py) with our one callback and the
fault guard, training, the end record. It runs the same in every process that trains: the one the cockpit starts (``engine.cli.launcher``; the UI runs in another
process and follows the run log), ``train --headless``, or each rank under ``accelerate launch``.
"""

from __future__ import annotations

import contextlib
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from engine.config.config import RunConfig, dump_resolved
from engine.data import datafp
from engine.errors import UserError
from engine.evaluate import gate
from engine.run import checkpoints
from engine.run.control import Controls
from engine.run.events import Listener, RunLog
from engine.run.heartbeat import Heartbeat
from engine.run.rundir import RunDir
from engine.run.runlock import OutputLock, RunLock
from engine.train import dist
from engine.train.build import build_trainer, liger_available
from engine.train.commands import CommandSource, open_source
from engine.train.health import watch_run
from engine.train.preflight import check_setup
from engine.train.resume import fingerprint, plan_resume
from engine.train.sinks import close_sinks, open_sinks


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


@dataclass
class RunResult:
    status: str
    step: int = 0
    run_dir: Path | None = None
    last_checkpoint: str | None = None
    extra: dict = field(default_factory=dict)


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
    setup_checked: bool = False,
    control_from_start: bool = False,
) -> RunResult:
    """Train to the end (or to a stop); returns how it ended. Raises UserError on bad input.

    ``setup_checked``: the caller ran the setup checks on this config (``preflight``) for this start.
    ``control_from_start``: the caller emptied the run's control file for this start (its commands
    count from then, not from when this takes the run's lock)."""
    # Packed batches change shape every step; without expandable segments the caching
    # allocator fragments (13 GiB reserved but unusable seen on an 8B run at 80 GB).
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    controls = controls or Controls()
    if config.resume_from_checkpoint and resume == "auto":
        resume = config.resume_from_checkpoint  # Axolotl's key for --resume PATH
    paths = run_paths(config, run_name, logs_dir)
    dist.init(config)  # several processes: join the group first (rank 0 writes, see engine/train/dist.py)
    if not setup_checked:
        check_setup(config)  # every problem found before anything is written, at once
    main = dist.is_main()
    # the 10% run's checks, before this run's folder is made (a refused start writes nothing)
    gated = gate.enforce(config, paths.run_dir, fresh=resume == "never" or not _has_checkpoint(paths))
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    with (
        RunLock(paths.run_dir) if main else contextlib.nullcontext(),
        OutputLock(paths.output_dir, paths.run_dir) if main else contextlib.nullcontext(),
        Heartbeat(paths.run_dir)
        if main
        else contextlib.nullcontext(),  # a sign of life when the log is quiet
    ):
        log = dist.run_log(paths.events, listeners)  # ranks > 0: a null sink
        # health alerts + GPU samples (every GPU of the host) into the run log, from rank 0
        watch = watch_run(log, config.health) if dist.is_main() else dist.NoWatch()
        sinks = open_sinks(config, paths.run_dir, log) if main else []  # trackers, notices (sinks/)
        log.listeners[:0] = sinks  # first: a sink sees a record before the alerts it raises
        if gated is not None and main:
            log.emit("gate", **gated)
            gate.record(paths.run_dir, gated)
        # Commands count from here: the control file (rank 0) and in-memory calls, one source.
        commands = open_source(controls, log, paths.run_dir, control_from_start)
        try:
            return _run(
                config, commands, log, paths, resume, list(notes or []), force_fresh, allow_world_size_change
            )
        except UserError as e:
            log.emit(
                "end", status="error", message=e.message, fix=e.fix or None
            )  # the fix apart: engine.run.records.End
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
            close_sinks(sinks)
            watch.stop()
            log.close()


def _run(
    config, commands, log, paths, resume, notes, force_fresh, allow_world_size_change=False
) -> RunResult:
    """The recipe: checks, the resume point, data, model + LoRA, trainer, training, the end."""
    import torch

    controls = commands.controls

    from engine.model.model import resolve_base
    from engine.train.early_stop import attach as attach_early_stop
    from engine.train.guard import Guard

    base = resolve_base(config.base_model)
    _check_machine(config, base)
    ckpt = plan_resume(config, paths, log, resume, notes, force_fresh, allow_world_size_change)
    # NaN/OOM/disk handling; --resume never starts from a clean run state.
    guard = Guard(config, log, controls, paths.output_dir, fresh=resume == "never" and dist.is_main())
    for note in filter(None, notes):
        log.emit("note", message=note)

    t0 = time.time()
    tokenizer, prepared = _tokenizer_and_data(config, base, log, commands, ckpt)
    if prepared is None:  # stopped while preparing: nothing half-made is kept; the same command starts again
        log.emit("end", step=ckpt.step if ckpt else 0, status="stopped", phase="prepare")
        return RunResult("stopped", ckpt.step if ckpt else 0, paths.run_dir)
    loaded = _load_model(config, base)
    callback = _callback(config, commands, log, paths, prepared, loaded)
    trainer = build_trainer(
        guard.effective_config(config, ckpt is not None),
        prepared,
        loaded.model,
        tokenizer,
        callback,
        paths,
        loaded.gc,
        loaded.dtype == torch.bfloat16,
    )
    watchdog = _watchdog(config, log, trainer)
    early = attach_early_stop(config, log, trainer)  # early_stopping_patience: stops at an eval
    trainer.hold = callback.hold  # the pause at a step boundary (saves and evals while paused)
    trainer.holding, callback.clock = callback.pauses_here, trainer.record_time
    guard.attach(trainer, callback, commands)
    # Only a start that got this far replaces the run's config (a failed one leaves it as it was).
    if dist.is_main():
        dump_resolved(config, RunDir(paths.run_dir).config)
    _emit_start(log, config, paths, trainer, loaded, ckpt, t0)
    if ckpt is not None:
        log.emit("resume", step=ckpt.step, from_step=ckpt.step, path=str(ckpt.path))
    guard.train(trainer, ckpt)  # trainer.train, again from a checkpoint after a NaN rollback
    status = guard.status or (watchdog and watchdog.status) or (early and early.status)
    status = status or ("stopped" if controls.stop.is_set() else callback.status)
    last = checkpoints.latest(paths.output_dir)
    log.emit(
        "end", step=trainer.state.global_step, status=status, checkpoint=str(last.path) if last else None
    )
    return RunResult(status, trainer.state.global_step, paths.run_dir, str(last.path) if last else None)


def _has_checkpoint(paths) -> bool:
    return checkpoints.latest(paths.output_dir) is not None


def _check_machine(config: RunConfig, base) -> None:
    """What this machine lacks for the config: exit 2 with the message, no traceback."""
    import torch

    from engine.model.model import load_base
    from engine.train.trainer_args import check_optimizer

    check_optimizer(config)  # an 8-/4-bit optimizer without its library or GPU
    if config.quant_bits and not torch.cuda.is_available():
        load_base(base, quant_bits=config.quant_bits, dtype=torch.float32)  # raises the clear message


def _tokenizer_and_data(config: RunConfig, base, log: RunLog, commands: CommandSource, ckpt):
    """(tokenizer, prepared data) with the data reported in the run log; prepared is None if stopped."""
    from engine.model.model import check_tokens, load_tokenizer

    tokenizer = load_tokenizer(
        base, config.chat_template, config.chat_template_jinja, config.trust_remote_code
    )
    check_tokens(tokenizer, config)
    prepared = _prepare_data(config, tokenizer, log, commands)
    if prepared is None:
        return tokenizer, None
    if ckpt is not None:
        datafp.check_content(ckpt.meta.get("data"), prepared.data, str(ckpt.path))
    _report_data(log, prepared)
    return tokenizer, prepared


def _report_data(log: RunLog, prepared) -> None:
    """Bad rows skipped, what the chat template did to rows, and the ``data`` record."""
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


@dataclass
class LoadedModel:
    """The base model with LoRA attached, and what the start record says about it."""

    model: object
    dtype: object
    gc: bool  # gradient checkpointing
    gc_reason: str
    attn: str | None  # the varlen attention registered for packed rows; None: sdpa
    trainable: int
    total: int
    flops_per_token: float
    peak_flops: float | None


def _load_model(config: RunConfig, base) -> LoadedModel:
    from transformers import set_seed

    from engine.model import attention
    from engine.model.model import attach_lora, load_base, pick_dtype

    dtype = pick_dtype(config.bf16)
    gc, gc_reason = _choose_gc(config)
    # LoRA's A matrices are drawn at attach time: seed first so a run is reproducible.
    set_seed(config.seed)
    attn = attention.register() if config.sample_packing else None
    model = load_base(
        base, quant_bits=config.quant_bits, dtype=dtype, trust_remote_code=config.trust_remote_code, attn=attn
    )
    model = attach_lora(model, config, gc)
    trainable, total = _param_counts(model)
    fpt, peak = _mfu_terms(model, config, trainable)
    return LoadedModel(model, dtype, gc, gc_reason, attn, trainable, total, fpt, peak)


def _callback(config: RunConfig, commands: CommandSource, log: RunLog, paths: RunPaths, prepared, loaded):
    """Our one callback: step records, saves with their markers, control commands, probes."""
    from engine.evaluate.probes import Probes
    from engine.train.callback import CockpitCallback

    # run_dir links a checkpoint back to its run (eval results and the checklist live there).
    meta = {
        "base_model": config.base_model,
        "fingerprint": fingerprint(config),
        "data": datafp.for_checkpoint(prepared.data),
        "run_dir": str(paths.run_dir.resolve()),
        **dist.checkpoint_meta(config),
    }
    return CockpitCallback(
        log,
        commands,
        save_total_limit=config.save_total_limit,
        meta=meta,
        flops_per_token=loaded.flops_per_token,
        peak_flops=loaded.peak_flops,
        probes=Probes(config, paths.run_dir, log) if config.evaluation.on_save and dist.is_main() else None,
        # At train begin: Trainer.train() applies Liger's kernels (transformers 5.x), and a warm-up
        # before it warms kernels no probe runs (measured: the first probe compiled them).
        before_first_step=lambda: _warm_decode(config, log, loaded.model),
    )


def _watchdog(config: RunConfig, log: RunLog, trainer):
    if config.loss_watchdog_threshold is None:
        return None
    from engine.train.loss_watchdog import LossWatchdog

    watchdog = LossWatchdog(log, config.loss_watchdog_threshold, config.loss_watchdog_patience)
    trainer.add_callback(watchdog)
    return watchdog


def _warm_decode(config: RunConfig, log: RunLog, model) -> float | None:
    """The decode kernels run once before the first step (engine.chat.warm): the first probe
    or chat does not compile them. Sharded models do not decode on one rank."""
    if not dist.is_main() or config.deepspeed or config.uses_fsdp:
        return None
    from engine.chat.warm import warm

    try:
        return warm(model)
    except Exception as e:  # a speed-up only: the probes and chats still compile what they need
        log.emit("note", message=f"decode kernels not warmed before training ({type(e).__name__}: {e})")
        return None


def _emit_start(
    log: RunLog, config: RunConfig, paths: RunPaths, trainer, loaded: LoadedModel, ckpt, t0: float
):
    peak = loaded.peak_flops
    log.emit(
        "start",
        step=ckpt.step if ckpt else 0,
        base_model=config.base_model,
        adapter=config.adapter,
        device=_device_name(),
        dtype=str(loaded.dtype).replace("torch.", ""),
        gradient_checkpointing=loaded.gc,
        gradient_checkpointing_reason=loaded.gc_reason,
        axolotl_defaults_differ=config._defaults_differ or None,
        attention=loaded.attn or "sdpa",
        liger=liger_available(),
        trainable_params=loaded.trainable,
        total_params=loaded.total,
        flops_per_token=loaded.flops_per_token,
        peak_tflops=round(peak / 1e12, 1) if peak else None,
        max_steps=trainer.state.max_steps or None,
        micro_batch_size=trainer.args.per_device_train_batch_size,  # the run state's after an OOM
        gradient_accumulation_steps=trainer.args.gradient_accumulation_steps,
        **dist.start_fields(config),  # world_size, distributed, ranks (a collective)
        output_dir=str(paths.output_dir),
        setup_s=round(time.time() - t0, 2),
        pid=os.getpid(),
    )


def _prepare_data(config: RunConfig, tokenizer, log: RunLog, commands: CommandSource):
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

        def should_stop() -> bool:
            commands.read_file()  # a `stop` written while the data is prepared counts too
            return commands.controls.stop.is_set()

        return prepare(config, tokenizer, progress=progress, should_stop=should_stop)

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
    for note in prepared.notes:  # a damaged cache rebuilt, a memo not written
        log.emit("note", message=note)
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

    on, need, free, copy = needs_checkpointing(config, liger_available())
    verdict = "on" if on else "off"
    probes = " (probes on save included)" if config.evaluation.on_save else ""
    if copy:
        probes = f" (probes on save included, with a {copy / 2**30:.1f} GiB bf16 copy of the 4-bit base to decode on)"
    elif copy == 0:
        probes = " (probes on save included; no room for a bf16 copy of the 4-bit base: they decode 4-bit)"
    return (
        on,
        f"auto: ~{need / 2**30:.1f} GiB needed without it{probes}, {free / 2**30:.1f} GiB free -> {verdict}",
    )


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
