"""Several GPUs in the run config: ``fsdp_config`` (Axolotl's FSDP1 and FSDP2 spellings) and
``distributed`` (processes and hosts), mounted on RunConfig (``engine.config.config``) by
``DistributedKeys`` with the DeepSpeed and DDP keys; ``check_deepspeed_json`` reads the DeepSpeed
file a config names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from engine.config.config_report import KeyError_
from engine.errors import UserError

FSDP_OPTIONS = (
    "full_shard",
    "shard_grad_op",
    "hybrid_shard",
    "hybrid_shard_zero2",
    "no_shard",
    "offload",
    "auto_wrap",
)


class FsdpConfig(BaseModel):
    """``fsdp_config:``, with Axolotl's FSDP2 key names; its FSDP1 spelling (the same names with
    an ``fsdp_`` prefix, e.g. ``fsdp_offload_params``) is accepted too. Passed to the trainer's
    FSDP plugin (accelerate); FSDP needs CUDA GPUs."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1, 2] | None = None
    """Same as the top-level ``fsdp_version`` (which wins)."""
    offload_params: bool = False
    """Keep parameters and gradients on the CPU between uses (slow; for models that do not fit)."""
    cpu_ram_efficient_loading: bool = False
    """Load the base weights on the first process only; the others receive them by broadcast."""
    auto_wrap_policy: Literal["TRANSFORMER_BASED_WRAP", "SIZE_BASED_WRAP", "NO_WRAP"] = (
        "TRANSFORMER_BASED_WRAP"
    )
    transformer_layer_cls_to_wrap: list[str] | str | None = None
    """Decoder layer class(es) to shard one by one, e.g. Qwen3DecoderLayer (default: the model's own
    ``_no_split_modules``)."""
    min_num_params: int = Field(0, ge=0)
    """With SIZE_BASED_WRAP: the smallest module (in parameters) that gets its own shard."""
    state_dict_type: Literal["FULL_STATE_DICT", "SHARDED_STATE_DICT"] = "FULL_STATE_DICT"
    """FULL: one adapter file as usual (gathered on rank 0). SHARDED: one file per rank (faster
    for large models; resume needs the same world size)."""
    reshard_after_forward: bool | None = None
    """FSDP2: free gathered parameters after the forward pass (default true, like full_shard)."""
    activation_checkpointing: bool = False
    """FSDP's own activation checkpointing; replaces ``gradient_checkpointing`` (which must not be
    true as well)."""
    sharding_strategy: (
        Literal["FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "HYBRID_SHARD_ZERO2", "NO_SHARD"] | None
    ) = None
    """FSDP1 only (FSDP2: reshard_after_forward)."""
    backward_prefetch: Literal["BACKWARD_PRE", "BACKWARD_POST", "NO_PREFETCH"] | None = None
    """FSDP1 only."""
    forward_prefetch: bool | None = None
    """FSDP1 only."""
    sync_module_states: bool | None = None
    """FSDP1 only."""
    use_orig_params: bool | None = None
    """FSDP1 only."""
    limit_all_gathers: bool | None = None
    """FSDP1 only."""

    @model_validator(mode="before")
    @classmethod
    def _axolotl_spellings(cls, data):
        if not isinstance(data, dict):
            return data
        out = {}
        for key, value in data.items():
            name = key[5:] if isinstance(key, str) and key.startswith("fsdp_") else key
            if name in out:
                raise KeyError_(
                    (key,), f"`{name}` is given twice (as `{name}` and `fsdp_{name}`)", "keep one"
                )
            if name in ("auto_wrap_policy", "state_dict_type", "sharding_strategy", "backward_prefetch") and (
                isinstance(value, str)
            ):
                value = value.upper()
            out[name] = value
        return out

    def v1_keys(self) -> list[str]:
        v1 = (
            "sharding_strategy",
            "backward_prefetch",
            "forward_prefetch",
            "sync_module_states",
            "use_orig_params",
        )
        return [k for k in (*v1, "limit_all_gathers") if getattr(self, k) is not None]


class DistributedConfig(BaseModel):
    """``distributed:``: how many processes on how many hosts. Axolotl leaves these to
    ``accelerate config``; here they live with the run and become ``accelerate launch`` flags.
    ``--nproc`` / ``--machine-rank`` on the command line override them."""

    model_config = ConfigDict(extra="forbid")

    num_processes: int | None = Field(None, gt=0)
    """Training processes in all, over all hosts (one per GPU). Unset: 1 (``--nproc N`` sets it)."""
    num_machines: int = Field(1, gt=0)
    """Hosts taking part; each runs the same command with its own ``machine_rank``."""
    machine_rank: int = Field(0, ge=0)
    """This host's rank, 0 .. num_machines-1. Host 0 holds rank 0, which writes the run log."""
    main_process_ip: str | None = None
    """Address of host 0 (needed with num_machines > 1)."""
    main_process_port: int | None = Field(None, ge=0, le=65535)
    """Port on host 0 for the rendezvous. Unset or 0 on one host: a free port is picked."""

    @model_validator(mode="after")
    def _hosts(self) -> DistributedConfig:
        if self.machine_rank >= self.num_machines:
            raise KeyError_(
                ("machine_rank",),
                f"machine_rank {self.machine_rank} is not below num_machines {self.num_machines}",
                "number the hosts 0 .. num_machines-1",
            )
        if self.num_machines > 1:
            for key in ("main_process_ip", "main_process_port", "num_processes"):
                if not getattr(self, key):
                    raise KeyError_(
                        (key,),
                        f"`{key}` is required with num_machines {self.num_machines}",
                        "set it for every host",
                    )
            if self.num_processes % self.num_machines:
                raise KeyError_(
                    ("num_processes",),
                    f"num_processes {self.num_processes} does not split evenly over {self.num_machines} machines",
                    "give every host the same number of processes (num_processes = hosts x GPUs per host)",
                )
        return self


class DistributedKeys(BaseModel):
    """The several-GPU keys of the run config (see engine/train/dist.py and README "Several
    GPUs"). A part of ``RunConfig`` (``engine.config.config``)."""

    deepspeed: str | None = None
    """Path of a DeepSpeed JSON config (presets: configs/deepspeed/zero2.json, zero3.json,
    zero3_offload.json); needs CUDA GPUs and the deepspeed package. Its "auto" values are filled
    from this config; it may not carry its own optimizer or scheduler."""
    fsdp: list[str] | bool | None = None
    """Axolotl's FSDP1 switch: a list of full_shard, shard_grad_op, hybrid_shard, no_shard,
    offload, auto_wrap (or true). ``fsdp_config`` alone turns FSDP on as well."""
    fsdp_version: Literal[1, 2] | None = None
    """FSDP version (default 2, or 1 with the FSDP1-only keys or the ``fsdp`` list)."""
    fsdp_config: FsdpConfig | None = None
    """FSDP settings (see FsdpConfig); needs CUDA GPUs."""
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    """Processes and hosts for ``accelerate launch`` (see DistributedConfig)."""
    ddp_timeout: int = Field(1800, gt=0)
    """Seconds a collective may wait for the other ranks before the job fails (slow data
    preparation or checkpoint saves on one rank count against it)."""
    ddp_find_unused_parameters: bool | None = None
    """DDP's find_unused_parameters (default: off with gradient checkpointing, as transformers does)."""
    ddp_bucket_cap_mb: int | None = Field(None, gt=0)
    ddp_broadcast_buffers: bool | None = None

    @property
    def uses_fsdp(self) -> bool:
        return bool(self.fsdp) or self.fsdp_config is not None


def check_deepspeed_json(path: str, where: str) -> dict:
    """The DeepSpeed JSON must exist, parse, and leave optimizer and schedule to the run config."""
    p = Path(path)
    if not p.is_file():
        raise UserError(
            f"{where}: `deepspeed`: {path}: no such file",
            "give the path of a DeepSpeed JSON config, e.g. configs/deepspeed/zero2.json",
        )
    try:
        ds = json.loads(p.read_text())
    except ValueError as e:
        at = f":{e.lineno}:{e.colno}" if isinstance(e, json.JSONDecodeError) else ""
        raise UserError(
            f"{path}{at}: not valid JSON ({getattr(e, 'msg', e)})", "fix the JSON syntax"
        ) from None
    if not isinstance(ds, dict):
        raise UserError(f"{path}: the top level must be a JSON object", "see configs/deepspeed/zero2.json")
    for key, ours in (("optimizer", "optimizer"), ("scheduler", "lr_scheduler")):
        if key in ds:
            raise UserError(
                f"{path}: `{key}` is set in the DeepSpeed JSON; the run config's `{ours}` is the one used",
                f"remove `{key}` from {p.name}",
            )
    if isinstance(ds.get("fp16"), dict) and ds["fp16"].get("enabled") is True:
        raise UserError(
            f"{path}: `fp16.enabled` is true; fp16 training is not supported",
            'use "auto" (bf16 where the GPU has it)',
        )
    stage = (
        (ds.get("zero_optimization") or {}).get("stage", 0)
        if isinstance(ds.get("zero_optimization"), dict)
        else 0
    )
    if stage not in (0, 1, 2, 3):
        raise UserError(
            f"{path}: `zero_optimization.stage` {stage!r} is not 0, 1, 2 or 3", "use a ZeRO stage 0-3"
        )
    return ds
