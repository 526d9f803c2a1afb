"""Several processes, one run: who writes what, what is shared, how commands reach every rank.

Under ``accelerate launch`` (torchrun underneath) every rank runs ``engine.train.train.run`` on its
share of each batch. This module keeps the rest of the engine unaware of that:

- rank 0 writes the run log, the resolved config, checkpoint markers and retention; the other
  ranks get a ``NullLog`` (their errors go to their own stderr);
- rank 0 picks the checkpoint to resume from (after clearing torn ones) and hands it to all
  (``share_from_main``), so no rank reads a folder that is being removed or written;
- a checkpoint is marked complete only after every rank has written its part (a barrier in
  ``SyncCallback.on_save``, before the marker);
- commands: rank 0 reads ``logs/<run>/control.jsonl`` (appended by the launcher or the cockpit;
  the protocol is ``engine.run.control_file``) at each step boundary, and the flags of all ranks are
  combined by one ``all_reduce`` of four ints, so pause / save-now / eval-now / stop act on the
  same step everywhere;
- world size goes into the ``start`` record and each checkpoint's marker; a resume on another
  world size is refused unless allowed (``check_world_size``).

A single-process run (``train --headless``, or the cockpit's one-process job) has world size 1: everything
here is then trivial, and the in-memory ``Controls`` stay the only command path.

Only the standard library is imported at the top; torch loads on use.
"""

from __future__ import annotations

import functools
import os
import socket
import time

from engine.errors import UserError

# The control-file protocol, re-exported: the launcher, the cockpit and the tests import it from here.
from engine.run.control_file import (  # noqa: F401
    COMMANDS,
    CONTROL_FILE,
    CONTROL_FROM_START_ENV,
    ControlFile,
    append_command,
    apply,
    control_path,
)

PAUSE_POLL_S = 0.25

_control_file_wanted = False


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def is_main() -> bool:
    return rank() == 0


# Set by engine/cli/launcher.py in the ranks' environment: the launcher writes the run's `end`
# record when a rank fails, naming the rank that took the job down (rank 0 alone cannot tell
# its own failure from a lost peer's: a dead rank shows up on rank 0 as a collective's error).
LAUNCHER_ENV = "LEVIATHAN_LAUNCHER"


def failure_kind() -> str:
    """The record kind for rank 0's own failure: ``end``, or ``rank_error`` under the launcher."""
    return "rank_error" if os.environ.get(LAUNCHER_ENV) == "1" else "end"


def use_control_file(on: bool = True) -> None:
    """Read commands from the run's control file even with one process (``engine.dist_main``)."""
    global _control_file_wanted
    _control_file_wanted = on


def initialized() -> bool:
    if world_size() == 1:
        return False
    import torch.distributed as td

    return td.is_available() and td.is_initialized()


def init(config) -> None:
    """Join the process group before anything else, the way the trainer would.

    The group must exist before the model loads (each rank's CUDA device is set here) and
    before rank 0 shares the resume point. The trainer's own ``PartialState`` later finds this
    one (accelerate keeps one state per process). Idempotent; nothing with one process.
    """
    if world_size() == 1 or initialized():
        return
    from datetime import timedelta

    import torch
    from accelerate import PartialState

    kwargs = {"timeout": timedelta(seconds=config.ddp_timeout)}
    if config.deepspeed:  # as TrainingArguments does: DeepSpeed sets up its own communication
        require_deepspeed(config.deepspeed)
        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        try:
            PartialState(**kwargs)
        finally:
            del os.environ["ACCELERATE_USE_DEEPSPEED"]
        return
    PartialState(cpu=not torch.cuda.is_available(), **kwargs)


def shutdown() -> None:
    """Leave the process group (a gloo group left standing aborts the interpreter at exit)."""
    if initialized():
        import torch.distributed as td

        td.destroy_process_group()


def _device():
    import torch
    import torch.distributed as td

    if "nccl" in str(td.get_backend()):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if initialized():
        import torch.distributed as td

        td.barrier()


def broadcast(obj):
    """Rank 0's ``obj`` on every rank."""
    if not initialized():
        return obj
    import torch.distributed as td

    box = [obj if is_main() else None]
    td.broadcast_object_list(box, src=0, device=_device())
    return box[0]


def gather(obj) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not initialized():
        return [obj]
    import torch.distributed as td

    out = [None] * world_size()
    td.all_gather_object(out, obj)
    return out


class RankAborted(Exception):
    """Raised on ranks > 0 when rank 0 failed during a shared step (rank 0 reports it)."""


def share_from_main(fn):
    """``fn()`` on rank 0, its result on every rank; when it raises on rank 0, every rank stops.

    For decisions that touch the file system (clearing torn checkpoints, choosing the one to
    resume from): made once, by the rank that writes, and seen the same by all.
    """
    if not initialized():
        return fn()
    if is_main():
        try:
            value = fn()
        except UserError as e:
            broadcast(("user", e.message, e.fix))
            raise
        except BaseException as e:
            broadcast(("error", f"{type(e).__name__}: {e}", ""))
            raise
        return broadcast(("ok", value, ""))[1]
    kind, value, fix = broadcast(None)
    if kind == "user":
        raise UserError(value, fix)
    if kind == "error":
        raise RankAborted(f"rank 0 failed: {value}")
    return value


# -- the run log on ranks > 0 ----------------------------------------------------------------


class NullLog:
    """The run log of ranks > 0: records are built (callers may read them) and dropped."""

    def __init__(self) -> None:
        self.listeners: list = []
        self.path = None

    def emit(self, kind: str, **fields) -> dict:
        return {
            "t": round(time.time(), 3),
            "kind": kind,
            **{k: v for k, v in fields.items() if v is not None},
        }

    def sync(self) -> None:
        pass

    def close(self) -> None:
        pass


class NoWatch:
    """Health rules and GPU sampling run on rank 0 only (it samples every GPU of its host)."""

    def stop(self) -> None:
        pass


def run_log(path, listeners=None):
    from engine.run.events import RunLog

    return RunLog(path, listeners) if is_main() else NullLog()


# -- what the run log and checkpoints record -------------------------------------------------


def mode(config) -> str:
    if config.deepspeed:
        return "deepspeed"
    if config.uses_fsdp:
        return "fsdp"
    return "ddp" if world_size() > 1 else "single"


def start_fields(config) -> dict:
    """Fields of the ``start`` record: world size, mode and every rank's pid, host and device.

    A collective: every rank calls it at the same point.
    """
    me = {"rank": rank(), "local_rank": local_rank(), "pid": os.getpid(), "host": socket.gethostname()}
    ranks = gather(me)
    return {
        "world_size": world_size(),
        "distributed": mode(config),
        "num_machines": config.distributed.num_machines if world_size() > 1 else 1,
        "global_batch": config.micro_batch_size * config.gradient_accumulation_steps * world_size(),
        "ranks": ranks if world_size() > 1 else None,
    }


def checkpoint_meta(config) -> dict:
    """Added to each checkpoint's marker."""
    meta = {"world_size": world_size(), "distributed": mode(config)}
    if config.fsdp_config and config.fsdp_config.state_dict_type == "SHARDED_STATE_DICT":
        meta["sharded"] = True
    return meta


def check_world_size(ckpt, config, allow: bool) -> str | None:
    """Refuse (UserError) a checkpoint of another world size unless allowed; returns a note when allowed."""
    old = int(ckpt.meta.get("world_size") or 1)
    new = world_size()
    if old == new:
        return None
    per_rank = config.micro_batch_size * config.gradient_accumulation_steps
    if ckpt.meta.get("sharded"):
        raise UserError(
            f"{ckpt.path} holds FSDP shards of {old} process(es) and this run has {new}: "
            "sharded checkpoints load only on the world size that wrote them",
            f"run with {old} processes (--nproc {old}), or resume from a FULL_STATE_DICT checkpoint",
        )
    if not allow:
        raise UserError(
            f"{ckpt.path} was saved by a run on {old} process(es) and this run has {new}: the global "
            f"batch would change from {per_rank * old} to {per_rank * new} sequences per step, so the "
            "learning-rate schedule, the position in the data and the per-rank random states saved "
            "with it no longer line up",
            f"run with --nproc {old}; or pass --allow-world-size-change to continue anyway; "
            "or --resume never with a new output_dir",
        )
    return (
        f"resuming a checkpoint of {old} process(es) on {new} (--allow-world-size-change): the global "
        f"batch is now {per_rank * new} sequences per step and the data order differs from before"
    )


# -- what the trainer is told ----------------------------------------------------------------


def require_deepspeed(path: str) -> None:
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        raise UserError(
            f"`deepspeed: {path}` needs the deepspeed package, which is not installed",
            "pip install 'leviathan-cockpit[deepspeed]' on the CUDA machine, or remove `deepspeed` "
            "to train with plain DDP",
        )


def require_cuda(key: str) -> None:
    import torch

    if not torch.cuda.is_available():
        raise UserError(
            f"`{key}` needs CUDA GPUs and this machine has none (accelerate runs CPU processes as "
            "plain DDP and would silently ignore it)",
            f"remove `{key}` to train with DDP here, or run on a GPU machine",
        )


def fsdp_settings(config) -> dict:
    """The config's Axolotl FSDP keys as transformers' ``fsdp_config``."""
    fc = config.fsdp_config
    opts = [] if config.fsdp in (None, True, False) else list(config.fsdp)
    version = config.fsdp_version or (fc.version if fc else None)
    if version is None:
        version = 1 if (opts or (fc and fc.v1_keys())) else 2
    out: dict = {"version": version}
    if fc is None:
        from engine.config.config import FsdpConfig

        fc = FsdpConfig()
    out["cpu_offload"] = fc.offload_params or "offload" in opts
    out["auto_wrap_policy"] = fc.auto_wrap_policy
    if fc.transformer_layer_cls_to_wrap:
        cls = fc.transformer_layer_cls_to_wrap
        out["transformer_layer_cls_to_wrap"] = [cls] if isinstance(cls, str) else list(cls)
    out["min_num_params"] = fc.min_num_params
    out["state_dict_type"] = fc.state_dict_type
    out["cpu_ram_efficient_loading"] = fc.cpu_ram_efficient_loading
    out["activation_checkpointing"] = fc.activation_checkpointing
    strategy = next((o for o in opts if o not in ("offload", "auto_wrap")), None)
    if version == 2:
        if fc.reshard_after_forward is not None:
            out["reshard_after_forward"] = fc.reshard_after_forward
        elif strategy is not None:
            out["reshard_after_forward"] = strategy != "shard_grad_op"
    else:
        out["reshard_after_forward"] = (fc.sharding_strategy or strategy or "full_shard").lower()
        for key in ("backward_prefetch", "forward_prefetch", "sync_module_states", "use_orig_params"):
            if getattr(fc, key) is not None:
                out[key] = getattr(fc, key)
        if fc.limit_all_gathers is not None:
            out["limit_all_gathers"] = fc.limit_all_gathers
    return out


def trainer_args(config) -> dict:
    """Extra ``SFTConfig`` arguments: DDP settings, and DeepSpeed or FSDP when configured."""
    out: dict = {"ddp_timeout": config.ddp_timeout}
    # Every LoRA weight takes part in every step: DDP need not search the graph for unused ones.
    find_unused = config.ddp_find_unused_parameters
    out["ddp_find_unused_parameters"] = bool(find_unused) if find_unused is not None else False
    if config.ddp_bucket_cap_mb is not None:
        out["ddp_bucket_cap_mb"] = config.ddp_bucket_cap_mb
    if config.ddp_broadcast_buffers is not None:
        out["ddp_broadcast_buffers"] = config.ddp_broadcast_buffers
    if config.deepspeed:
        require_deepspeed(config.deepspeed)
        require_cuda("deepspeed")
        out["deepspeed"] = config.deepspeed
    elif config.uses_fsdp:
        require_cuda("fsdp_config" if config.fsdp_config is not None else "fsdp")
        out["fsdp"] = True
        out["fsdp_config"] = fsdp_settings(config)
    return out


# -- commands for every rank (the control file: engine.run.control_file) ----------------------


class SyncSteps:
    """The step-boundary logic of ``SyncCallback`` (a TrainerCallback made on use, so this
    module stays free of transformers at import).

    Runs before the cockpit callback at each step boundary, on every rank.

    Rank 0 reads the control file; one ``all_reduce(MAX)`` of [stop, pause, save, eval] gives
    every rank the same flags (pause is rank 0's alone, so a resume there resumes all); while
    paused (the cockpit callback pauses once the step's record is written), all ranks wait
    together, polling every ``PAUSE_POLL_S``. On save, a barrier makes
    every rank finish its part of the checkpoint before rank 0 marks it complete.
    """

    def __init__(self, controls, log, control_file: ControlFile | None, cockpit_callback=None) -> None:
        self.controls = controls
        self.log = log
        self.file = control_file
        self.cockpit = cockpit_callback
        self._paused = False  # the last agreed pause state: the same on every rank
        if cockpit_callback is not None:
            cockpit_callback.wait_paused = self.wait_paused
            cockpit_callback.poll_commands = self.poll_between  # read while probes run

    def _sync(self, step: int) -> list[str]:
        c = self.controls
        commands = [cmd["command"] for cmd in self.file.poll(c)] if self.file is not None else []
        if not initialized():
            return commands
        import torch
        import torch.distributed as td

        before = (c.stop.is_set(), c.pause.is_set(), c.save_now.is_set(), c.eval_now.is_set())
        flags = torch.tensor(
            [before[0], before[1] if is_main() else False, before[2], before[3]],
            dtype=torch.int32,
            device=_device(),
        )
        td.all_reduce(flags, op=td.ReduceOp.MAX)
        stop, pause, save, evaluate = (bool(x) for x in flags.tolist())
        if stop and not c.stop.is_set():
            c.request_stop("rank 0" if not is_main() else "another rank")
        if pause != c.pause.is_set():
            c.request_pause() if pause else c.request_resume()
        if save:
            c.save_now.set()
        if evaluate:
            c.eval_now.set()
        changed = stop or save or evaluate or pause != self._paused
        self._paused = pause
        if changed:
            # Which step each rank acts on: the same one, or the run log says otherwise.
            steps = gather(step)
            self.log.emit(
                "control",
                step=step,
                commands=commands or None,
                flags={"stop": stop, "pause": pause, "save": save, "eval": evaluate},
                rank_steps=steps,
            )
        return commands

    def poll_between(self, step: int) -> None:
        """Rank 0 reads the control file between steps (while probes run), so a key cuts them
        short; the flags are agreed with the other ranks at the next step boundary as usual."""
        commands = [cmd["command"] for cmd in self.file.poll(self.controls)] if self.file is not None else []
        if commands:
            self.log.emit("control", step=step, commands=commands, between_steps=True)

    def on_step_end(self, args, state, control, **kwargs):
        commands = self._sync(state.global_step)
        if commands and not initialized():
            self.log.emit("control", step=state.global_step, commands=commands)
        return control

    def wait_paused(self, state, kwargs) -> None:
        """The cockpit callback's wait while paused, done by every rank together: each poll
        agrees the flags again, so a resume (or stop) read by rank 0 releases them all."""
        c = self.controls
        while c.pause.is_set() and not c.stop.is_set():
            time.sleep(PAUSE_POLL_S)
            self._sync(state.global_step)
            if self.cockpit is not None and not initialized():
                self.cockpit._run_jobs(state, kwargs)  # chat while paused (one process)

    def on_save(self, args, state, control, **kwargs):
        barrier()  # every rank's files (its RNG state, its shard) are on disk before the marker
        return control


_SYNC_CLASS = None


def sync_callback_class():
    global _SYNC_CLASS
    if _SYNC_CLASS is None:
        from transformers import TrainerCallback

        _SYNC_CLASS = type("SyncCallback", (SyncSteps, TrainerCallback), {})
    return _SYNC_CLASS


def _chat_job(run_dir):
    """Chat on the live weights through the control file: one process only (rank 0 alone does
    not hold the whole model when there are several)."""
    if initialized():
        return None
    from engine.chat.chat_bridge import job_from_command

    return functools.partial(job_from_command, run_dir)


def attach(trainer, controls, log, run_dir) -> None:
    """Put the ``SyncCallback`` in front of the cockpit callback when there is more than one
    process, or when ``engine.dist_main`` asked for the control file."""
    if world_size() == 1 and not _control_file_wanted:
        return
    from_start = os.environ.get(CONTROL_FROM_START_ENV) == "1"
    control_file = ControlFile(control_path(run_dir), from_start, _chat_job(run_dir)) if is_main() else None
    callbacks = trainer.callback_handler.callbacks
    cockpit = next((cb for cb in callbacks if type(cb).__name__ == "CockpitCallback"), None)
    sync = sync_callback_class()(controls, log, control_file, cockpit)
    callbacks.insert(callbacks.index(cockpit) if cockpit is not None else len(callbacks), sync)
