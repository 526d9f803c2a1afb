"""Several processes, one run: who writes what, what is shared, how commands reach every rank.

Under ``accelerate launch`` (torchrun underneath) every rank runs ``engine.train.train.run`` on its
share of each batch. This module keeps the rest of the engine unaware of that:

- rank 0 writes the run log, the resolved config, checkpoint markers and retention; the other
  ranks get a ``NullLog`` (their errors go to their own stderr);
- rank 0 picks the checkpoint to resume from (after clearing torn ones) and hands it to all
  (``share_from_main``), so no rank reads a folder that is being removed or written;
- a checkpoint is marked complete only after every rank has written its part (a barrier in
  the callback's ``on_save``, before the marker);
- commands: ``engine.train.commands`` (rank 0 reads the control file, one ``all_reduce``
  gives every rank the same flags) with the collectives defined here;
- world size goes into the ``start`` record and each checkpoint's marker; a resume on another
  world size is refused unless allowed (``check_world_size``).

A single-process run (``train --headless``, or the cockpit's one-process job) has world size 1:
everything here is then trivial.

Only the standard library is imported at the top; torch loads on use.
"""

from __future__ import annotations

import os
import socket
import time

from engine.errors import UserError
from engine.run import records


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
    if world_size() == 1:
        refuse_fsdp_alone(config)
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


def device():
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
    td.broadcast_object_list(box, src=0, device=device())
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
        record = {
            "t": round(time.time(), 3),
            "kind": kind,
            **{k: v for k, v in fields.items() if v is not None},
        }
        records.check(record)  # the same declaration as rank 0's RunLog.emit
        return record

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


def refuse_fsdp_alone(config) -> None:
    error = fsdp_alone(config)
    if error is not None:
        raise error


def fsdp_alone(config) -> UserError | None:
    """FSDP shards over several processes; on one, transformers stops deep in the trainer's
    set-up ("Using fsdp only works in distributed training"). Axolotl's qlora-fsdp examples set it."""
    if not config.uses_fsdp:
        return None
    keys = ", ".join(f"`{k}`" for k in ("fsdp", "fsdp_config", "fsdp_version") if getattr(config, k, None))
    return UserError(
        f"{keys}: FSDP shards the model over several processes and this run has one",
        f"train with several processes (`leviathan-cockpit train CONFIG --nproc N`, N GPUs), or "
        f"remove {keys} from the config to train on one",
    )


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
