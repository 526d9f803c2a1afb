"""Several GPUs in the run config: ``fsdp_config`` (Axolotl's FSDP1 and FSDP2 spellings) and
``distributed`` (processes and hosts). Mounted on RunConfig by ``engine.config.config``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from engine.config.config_report import KeyError_

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
