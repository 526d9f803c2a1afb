"""YAML -> a validated run config, with Axolotl's key names.

A user brings their Axolotl file unchanged. Every key is one of:

- honoured: a field of ``RunConfig`` below, applied exactly;
- noted: a known Axolotl key with no effect here that changes nothing about the result
  (logging integrations, attention back-end flags: the engine picks its own attention);
  a note says so in the run log and on stderr;
- unsupported: a known Axolotl key that would change training and that we do not do;
  refused by name (exit 2), never silently ignored;
- unknown: refused with "did you mean ...".

Paths: a relative dataset or model path is looked up first in the config file's folder,
then in the current directory (Axolotl's own rule, so configs used from a project root
keep working). A relative ``output_dir`` or ``logs_dir`` is taken from the current
directory, as Axolotl does.
"""

from __future__ import annotations

import contextlib
import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from engine.errors import UserError
from engine.evalconfig import ChecklistConfig, EvaluationConfig

NOTED_KEYS = {
    "wandb_project": "W&B logging is not built in; the run log and cockpit replace it",
    "wandb_entity": "W&B logging is not built in",
    "wandb_watch": "W&B logging is not built in",
    "wandb_name": "W&B logging is not built in",
    "wandb_run_id": "W&B logging is not built in",
    "wandb_log_model": "W&B logging is not built in",
    "wandb_mode": "W&B logging is not built in",
    "flash_attention": "the engine picks its attention (varlen flash kernels on CUDA, exact per-document attention on CPU)",
    "sdp_attention": "the engine picks its attention",
    "xformers_attention": "the engine picks its attention",
    "strict": "has no meaning here",
    "debug": "has no meaning here",
    "tokenizer_type": "the tokenizer always loads with AutoTokenizer",
    "model_type": "the model class is chosen from its config (causal LM or image-text-to-text)",
    "is_llama_derived_model": "has no meaning here",
    "is_qwen_derived_model": "has no meaning here",
    "pad_to_sequence_len": "packed batches are padding-free",
    "eval_sample_packing": "evaluation is packed like training",
    "local_rank": "set by the launcher",
    "hub_model_id": "use `leviathan-cockpit push`",
    "eval_table_size": "has no meaning here",
    "group_by_length": "packing already groups by length",
    "use_tensorboard": "the run log replaces it",
    "tf32": "TF32 matmuls are enabled on GPUs that have them",
}

UNSUPPORTED_KEYS = {
    "gptq": "GPTQ models are not supported; use adapter: qlora",
    "peft_use_dora": "DoRA is not supported",
    "peft_use_rslora": "rsLoRA is not supported",
    "lora_fan_in_fan_out": "not supported",
    "lora_modules_to_save": "training extra full modules is not supported",
    "unfrozen_parameters": "full fine-tuning of chosen parameters is not supported",
    "special_tokens": "adding special tokens is not supported; the base tokenizer is used as is",
    "tokens": "adding tokens is not supported",
    "rl": "RL training is not supported; this is supervised fine-tuning",
    "fp16": "fp16 training is not supported; use bf16 (or fp32 where bf16 is missing)",
    "relora_steps": "ReLoRA is not supported",
    "max_packed_sequence_len": "use sequence_len with sample_packing",
    "early_stopping_patience": "early stopping is not supported; watch the health alerts",
    "plugins": "Axolotl plugins are not supported",
    "resume_from_checkpoint": "use --resume PATH on the command line",
    "auto_resume_from_checkpoints": "resuming is automatic; see --resume",
    "torch_compile": "compilation is chosen by the engine",
    "evals_per_epoch": "use eval_steps",
    "saves_per_epoch": "use save_steps",
}


class DatasetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    path: str
    """A local JSONL file (one example a line)."""
    type: Literal["chat_template", "sharegpt", "alpaca"] = "chat_template"
    """chat_template: OpenAI ``messages``; sharegpt: ``conversations`` with from/value;
    alpaca: instruction/input/output."""
    field_messages: str | None = None
    """The key holding the turns (default ``messages``, or ``conversations`` for sharegpt)."""

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        return _usable_path(v)


def _usable_path(v: str | None) -> str | None:
    if v is not None and ("\x00" in v or not v.strip()):
        raise ValueError("a path must be non-empty and cannot contain a NUL byte")
    return v


class HealthConfig(BaseModel):
    """Thresholds of the guide's health rules (``health:`` in the config); the defaults are
    the guide's numbers. Each rule fires once per episode and re-arms when healthy again."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    enabled: bool = True
    """False: no health alerts (GPU sampling still runs)."""
    initial_loss_min: float = 2.0
    """The first logged loss is expected in [initial_loss_min, initial_loss_max] (guide: 2.0-3.0)."""
    initial_loss_max: float = 3.0
    """Above it: a warning, "OK if higher, will decrease"."""
    final_loss_max: float = 1.5
    """Train loss (mean of the last 10 logged) expected below this at the last step (guide,
    10% run: < 1.5)."""
    final_loss_check_data: float = 2.0
    """Above it at the last step the advice is to check the data format (guide: > 2.0)."""
    perplexity_max: float = 3.0
    """Validation perplexity expected below this (guide: < 3.0): a warning above it."""
    perplexity_investigate: float = 4.0
    """Validation perplexity above this is critical (guide: investigate if > 4.0)."""
    perplexity_after_epoch: float = 1.0
    """Perplexity rules apply from this epoch on: earlier, the guide's own table expects more
    (~3.5 at epoch 0.5)."""
    gpu_memory_max_gb: float = 75.0
    """Used memory of any GPU above this (GiB, as nvidia-smi counts) is critical (guide: < 75 GB)."""
    gpu_memory_near: float = 0.9
    """A "nearing the limit" warning from this fraction of gpu_memory_max_gb."""
    gpu_sample_s: float = Field(10.0, gt=0)
    """Seconds between two GPU samples in the run log."""
    smoothing_span: int = Field(50, gt=0)
    """Logged steps over which the train loss is smoothed (EMA span) for the plateau,
    overfitting and underfitting rules."""
    plateau_steps: int = Field(1000, gt=0)
    """Plateau: the smoothed loss has not improved by plateau_min_delta for this many steps."""
    plateau_min_delta: float = Field(0.01, ge=0)
    spike_factor: float = Field(1.5, gt=1)
    """Spike: a logged loss above spike_factor x the median of the recent window."""
    spike_min_delta: float = Field(0.3, ge=0)
    """Spike: the jump must also exceed the median by this much; near a loss of 0.1 a 1.5x ratio is noise."""
    spike_window: int = Field(50, gt=1)
    """Logged steps in the spike rule's recent window (it needs 10 of them, or all, first)."""
    overfit_gap: float = 0.5
    """Overfitting: eval_loss - smoothed train loss above this (guide: > 0.5)."""
    underfit_loss: float = 1.5
    """Underfitting: eval and train loss both above this after underfit_after_epoch (guide: 1.5)."""
    underfit_after_epoch: float = 1.0


class ExportConfig(BaseModel):
    """Serving settings for `leviathan-cockpit export` (Ollama Modelfile); the defaults are the guide's."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    system_prompt: str | None = None
    """The Modelfile's SYSTEM prompt (none by default; `export ollama --system` overrides)."""
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(0.9, gt=0, le=1)
    num_ctx: int = Field(4096, gt=0)
    """Context length Ollama serves with."""


class GuardConfig(BaseModel):
    """What the engine does when a long run meets a fault (``guard:`` in the config).

    NaN/Inf: a step whose loss or gradient norm is not finite is skipped (no optimizer update;
    the step still counts, so the step counter and the LR schedule move on) and raises a
    ``nan`` alert. Out of memory: the step is retried with half the micro batch and twice the
    accumulation (same effective batch). Disk: free space is checked before every save."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    nan_patience: int = Field(3, gt=0)
    """Non-finite steps in a row before ``nan_policy`` acts (each one is skipped)."""
    nan_policy: Literal["rollback", "stop"] = "rollback"
    """rollback: go back to the newest complete checkpoint saved before the bad steps began and
    go on with the learning rate times ``nan_lr_scale``; stop: end the run (status diverged)."""
    nan_lr_scale: float = Field(0.5, gt=0, le=1)
    """Factor on the learning rate at each rollback (it compounds: 0.5, 0.25, ...)."""
    nan_max_rollbacks: int = Field(3, ge=0)
    """Rollbacks allowed in one run; one more streak of non-finite steps stops it."""
    oom_retry: bool = True
    """On CUDA out of memory in a step: retry it with half the micro batch and twice
    gradient_accumulation_steps, kept for the rest of the run and on resume."""
    disk_margin: float = Field(1.25, gt=0)
    """A save starts only with this many times the last checkpoint's size free on the
    output_dir's disk (no checkpoint yet: an estimate from the trainable parameters)."""
    disk_poll_s: float = Field(5.0, gt=0)
    """While paused for disk space: seconds between two looks at the free space."""
    save_best: bool = True
    """When an evaluation finds a new best eval_loss at a step that is not a save step, save a
    checkpoint there too, so the best weights exist on disk and retention keeps them."""


class KeyError_(ValueError):
    """Raised by a validator to name the exact sub-key at fault (``loc`` below the field)."""

    def __init__(self, loc: tuple, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.loc, self.message, self.fix = loc, message, fix


class CurriculumPhase(BaseModel):
    """One phase of the curriculum: a span of training with its own category mix."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(min_length=1)
    """Shown in the cockpit and in the run log's ``phase`` records."""
    start_epoch: float = Field(ge=0)
    """Where the phase begins, in epochs of training (0.0 is the first step; 1.5 is half-way
    through the second epoch)."""
    end_epoch: float = Field(gt=0)
    """Where it ends (exclusive). Phases may not overlap; a gap trains on the natural mix."""
    weights: dict[str, float] | None = None
    """Share of the examples drawn from each ``_category`` while the phase lasts (made to sum
    to 1). ``"*"`` is one weight for all the categories not named, shared among them by their
    sizes (the rest of the corpus in its natural mix). Without ``"*"``, categories not named are
    left out of the phase. Omitted: the natural mix (every example equally likely, each seen
    once per epoch)."""

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is None:
            return v
        for cat, w in v.items():
            if not w >= 0:
                raise KeyError_((cat,), f"weight {w!r} is negative", "weights are shares: 0 or more")
        if not any(w > 0 for w in v.values()):
            raise KeyError_((), "every weight is 0", "give at least one category a weight above 0")
        return v


class CurriculumConfig(BaseModel):
    """Phases over epochs with category weights, applied by a sampler over the training set
    (files are not rewritten). Reproducible by ``seed`` and exact on resume."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    phases: list[CurriculumPhase] = Field(min_length=1)
    """In order of ``start_epoch``."""
    mix_every: int = Field(50, gt=0)
    """Steps between the run log's ``mix`` records (the mix of categories seen so far)."""

    @model_validator(mode="after")
    def _ordered(self) -> CurriculumConfig:
        names = set()
        for i, ph in enumerate(self.phases):
            if ph.end_epoch <= ph.start_epoch:
                raise KeyError_(
                    ("phases", i, "end_epoch"),
                    f"end_epoch {ph.end_epoch} is not after start_epoch {ph.start_epoch}",
                    "a phase ends after it starts",
                )
            if i and ph.start_epoch < self.phases[i - 1].end_epoch:
                raise KeyError_(
                    ("phases", i, "start_epoch"),
                    f"phase {ph.name!r} starts at {ph.start_epoch}, before phase "
                    f"{self.phases[i - 1].name!r} ends ({self.phases[i - 1].end_epoch})",
                    "list phases in order, without overlaps",
                )
            if ph.name in names:
                raise KeyError_(
                    ("phases", i, "name"), f"phase name {ph.name!r} is used twice", "name each phase once"
                )
            names.add(ph.name)
        return self


class ChatPresetSpec(BaseModel):
    """One prompt of the chat pane's preset list."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    prompt: str = Field(min_length=1)
    label: str | None = None
    """What the list shows (default: the prompt's start)."""
    group: str = "config"
    """Groups pass/fail marks in the checklist (identity, esoteric, code, ...)."""


class ChatConfig(BaseModel):
    """The chat pane: system prompt, generation defaults, presets added to the guide's own."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    system: str | None = None
    """System prompt the pane starts with (editable there); none by default."""
    temperature: float = Field(0.7, ge=0)
    """0 means greedy decoding."""
    top_p: float = Field(0.9, gt=0, le=1)
    max_new_tokens: int = Field(256, gt=0)
    presets: list[ChatPresetSpec | str] = Field(default_factory=list)
    """Prompts (plain strings, or prompt/label/group) listed after the guide's spot checks."""


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


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)

    base_model: str
    """A local model folder or a hub id (already in the local cache: nothing is downloaded)."""
    trust_remote_code: bool = False
    datasets: list[DatasetSpec] = Field(min_length=1)
    chat_template: str = "tokenizer_default"
    """tokenizer_default (the model's own), chatml, llama3, or jinja with chat_template_jinja."""
    chat_template_jinja: str | None = None
    train_on_inputs: bool = False
    """False: loss on assistant tokens only (Axolotl's default)."""

    adapter: Literal["lora", "qlora"] = "lora"
    lora_r: int = Field(16, gt=0)
    lora_alpha: int = Field(32, gt=0)
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    lora_target_linear: bool = True
    """True: every linear layer of the language model (never the vision tower or lm_head)."""
    lora_target_modules: list[str] | None = None
    load_in_4bit: bool = False
    load_in_8bit: bool = False

    sequence_len: int = Field(2048, gt=8)
    sample_packing: bool = True
    too_long: Literal["truncate", "drop"] = "truncate"
    """What to do with an example longer than sequence_len."""
    skip_bad_rows: bool = False
    """False: bad rows stop the run with their file:line list. True: skip and log them."""
    dataset_prepared_path: str | None = None
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
    optimizer: Literal[
        "adamw_torch",
        "adamw_torch_fused",
        "adamw_8bit",
        "adamw_bnb_8bit",
        "paged_adamw_8bit",
        "paged_adamw_32bit",
        "adafactor",
        "sgd",
    ] = "adamw_torch_fused"
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, ge=0)
    gradient_checkpointing: bool | Literal["auto"] = "auto"
    """auto: off when the memory estimate fits the GPU, on otherwise (the choice is logged)."""
    bf16: bool | Literal["auto"] = "auto"

    val_set_size: float = Field(0.0, ge=0)
    """A fraction (< 1) or a number of rows (>= 1) held out for evaluation, seeded."""
    eval_steps: int | None = Field(None, gt=0)
    save_steps: int | None = Field(None, gt=0)
    logging_steps: int = Field(1, gt=0)
    save_total_limit: int | None = Field(None, gt=0)
    output_dir: str = "./outputs/run"
    seed: int = 42

    logs_dir: str = "logs"
    run_name: str | None = None
    health: HealthConfig = Field(default_factory=HealthConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    """The identity and inference suites: persona, prompts, suite file, generation length."""
    checklist: ChecklistConfig = Field(default_factory=ChecklistConfig)
    """The validation checklist's items (the guide's lists by default)."""
    export: ExportConfig = Field(default_factory=ExportConfig)
    """Serving settings used after training (`leviathan-cockpit export ollama`)."""
    curriculum: CurriculumConfig | None = None
    """Phases over epochs with ``_category`` weights (see CurriculumConfig); none: every epoch
    is the natural mix."""
    chat: ChatConfig = Field(default_factory=ChatConfig)
    """The chat pane: system prompt, sampling settings and presets (the guide's by default)."""
    guard: GuardConfig = Field(default_factory=GuardConfig)
    """Fault handling: NaN/Inf steps, out of memory, disk space, best checkpoint (see GuardConfig)."""

    @field_validator("base_model", "output_dir", "logs_dir", "dataset_prepared_path")
    @classmethod
    def _paths(cls, v: str | None) -> str | None:
        return _usable_path(v)

    @field_validator("run_name")
    @classmethod
    def _run_name(cls, v: str | None) -> str | None:
        if v and ("\x00" in v or "/" in v or v in (".", "..")):
            raise ValueError("a run name is one folder name: no '/', no NUL byte, not . or ..")
        return v

    # -- several GPUs (see engine/dist.py and README "Several GPUs") --
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

    @field_validator("val_set_size")
    @classmethod
    def _whole_count(cls, v: float) -> float:
        if v >= 1 and v != int(v):
            raise ValueError("a count of rows must be a whole number (or use a fraction below 1)")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        if self.load_in_4bit and self.load_in_8bit:
            raise ValueError("load_in_4bit and load_in_8bit: choose one")
        if self.adapter == "qlora" and self.load_in_8bit:
            raise ValueError("adapter: qlora quantizes to 4 bits; drop load_in_8bit")
        if self.chat_template == "jinja" and not self.chat_template_jinja:
            raise ValueError("chat_template: jinja needs chat_template_jinja")
        if self.curriculum is not None and self.max_steps is None:
            last = len(self.curriculum.phases) - 1
            if self.curriculum.phases[last].start_epoch >= self.num_epochs:
                raise KeyError_(
                    ("curriculum", "phases", last, "start_epoch"),
                    f"the phase starts at epoch {self.curriculum.phases[last].start_epoch} "
                    f"but training ends at num_epochs {self.num_epochs:g}",
                    "start it earlier or raise num_epochs",
                )
        if self.deepspeed and self.uses_fsdp:
            raise ValueError("deepspeed and fsdp/fsdp_config are two ways to shard: choose one")
        if self.fsdp is not None and not isinstance(self.fsdp, bool):
            for i, opt in enumerate(self.fsdp):
                if opt not in FSDP_OPTIONS:
                    raise KeyError_(
                        ("fsdp", i), f"`{opt}` is not an fsdp option", f"use {', '.join(FSDP_OPTIONS)}"
                    )
        if self.fsdp_config is not None and self.fsdp_config.activation_checkpointing:
            if self.gradient_checkpointing is True:
                raise KeyError_(
                    ("gradient_checkpointing",),
                    "gradient_checkpointing and fsdp_config.activation_checkpointing are both on",
                    "keep fsdp_config.activation_checkpointing (FSDP's own) and drop gradient_checkpointing",
                )
            self.gradient_checkpointing = False  # FSDP checkpoints activations itself
        if self.chat_template not in ("tokenizer_default", "chatml", "llama3", "jinja"):
            raise ValueError(
                f"chat_template {self.chat_template!r} is not one of tokenizer_default, chatml, llama3, jinja"
            )
        return self

    @property
    def uses_fsdp(self) -> bool:
        return bool(self.fsdp) or self.fsdp_config is not None

    @property
    def quant_bits(self) -> int | None:
        if self.adapter == "qlora" or self.load_in_4bit:
            return 4
        return 8 if self.load_in_8bit else None


KNOWN_KEYS = sorted(set(RunConfig.model_fields) | set(NOTED_KEYS) | set(UNSUPPORTED_KEYS))


def _key_lines(text: str) -> dict[tuple, int]:
    """Line numbers of every mapping key, by its path, for messages that point at a line."""
    lines: dict[tuple, int] = {}

    def walk(node, path):
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = path + (k.value,)
                lines[key] = k.start_mark.line + 1
                walk(v, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                lines[path + (i,)] = v.start_mark.line + 1
                walk(v, path + (i,))

    with contextlib.suppress(yaml.YAMLError):
        walk(yaml.compose(text), ())
    return lines


def _where(file: str, lines: dict[tuple, int], loc: tuple) -> str:
    while loc and loc not in lines:
        loc = loc[:-1]
    return f"{file}:{lines[loc]}" if loc else file


def _resolve_path(value: str, base: Path) -> str:
    try:
        p = Path(value).expanduser()
    except RuntimeError:  # ~user of a user that does not exist
        return value
    if p.is_absolute():
        return str(p)
    for root in (base, Path.cwd()):
        if (root / p).exists():
            return str((root / p).resolve())
    return value


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> tuple[RunConfig, list[str]]:
    """Read and validate a config; returns it with the notes on keys that have no effect."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"{file}: no such config file", "give the path of an Axolotl-style YAML file")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = file.read_bytes()[: e.start].count(b"\n") + 1
        raise UserError(
            f"{file}:{line}: not UTF-8 text (byte {e.start})", "save the config as UTF-8"
        ) from None
    except OSError as e:
        raise UserError(
            f"{file}: cannot read the config ({e.strerror})", "check the path and its permissions"
        ) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{file}:{mark.line + 1}" if mark else str(file)
        raise UserError(
            f"{where}: not valid YAML ({getattr(e, 'problem', e)})", "fix the YAML syntax"
        ) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{file}: the top level must be a mapping of keys", "write `key: value` lines")
    return validate(raw, file, text, overrides)


def validate(
    raw: dict, file: Path, text: str = "", overrides: dict[str, Any] | None = None
) -> tuple[RunConfig, list[str]]:
    lines = _key_lines(text)
    notes = []
    data = {}
    for key, value in raw.items():
        skey = str(key)
        if skey in NOTED_KEYS:
            notes.append(
                f"{_where(str(file), lines, (skey,))}: `{skey}` has no effect here: {NOTED_KEYS[skey]}"
            )
        elif skey in UNSUPPORTED_KEYS:
            raise UserError(
                f"{_where(str(file), lines, (skey,))}: `{skey}` is an Axolotl key this engine does not "
                f"support: {UNSUPPORTED_KEYS[skey]}.",
                f"remove `{skey}` from the config",
            )
        elif skey not in RunConfig.model_fields:
            close = difflib.get_close_matches(skey, KNOWN_KEYS, n=1, cutoff=0.6)
            hint = f"did you mean `{close[0]}`?" if close else "see README.md for the keys"
            raise UserError(f"{_where(str(file), lines, (skey,))}: unknown key `{skey}`", hint)
        else:
            data[skey] = value
    data.update(overrides or {})
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as e:
        raise _explain(e, file, lines) from None
    base = file.resolve().parent
    for ds in config.datasets:
        ds.path = _resolve_path(ds.path, base)
    config.base_model = _resolve_path(config.base_model, base)
    if config.deepspeed:
        config.deepspeed = _resolve_path(config.deepspeed, base)
        check_deepspeed_json(config.deepspeed, _where(str(file), lines, ("deepspeed",)))
    return config, notes


def check_deepspeed_json(path: str, where: str) -> dict:
    """The DeepSpeed JSON must exist, parse, and leave optimizer and schedule to the run config."""
    import json

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


def _model_at(loc: tuple):
    """The pydantic model class that owns the keys at ``loc`` (list indices skipped)."""
    import typing

    model = RunConfig
    for part in loc:
        if isinstance(part, int) or part not in model.model_fields:
            continue
        annotation = model.model_fields[part].annotation
        candidates = [annotation, *typing.get_args(annotation)]
        for c in candidates:
            c = next((a for a in typing.get_args(c) if isinstance(a, type) and issubclass(a, BaseModel)), c)
            if isinstance(c, type) and issubclass(c, BaseModel):
                model = c
                break
    return model


def _explain(e: ValidationError, file: Path, lines: dict[tuple, int]) -> UserError:
    err = e.errors()[0]
    loc = tuple(err["loc"])
    exc = err.get("ctx", {}).get("error")
    if isinstance(exc, KeyError_):  # a validator that names the sub-key at fault
        loc = loc + exc.loc
        return UserError(f"{_where(str(file), lines, loc)}: `{_dotted(loc)}`: {exc.message}", exc.fix)
    key = ".".join(str(p) for p in loc) or "(top level)"
    where = _where(str(file), lines, loc)
    if err["type"] == "missing":
        return UserError(f"{where}: required key `{key}` is missing", f"add `{key}:` to the config")
    if err["type"] == "extra_forbidden":
        field = str(loc[-1])
        parent = _model_at(loc[:-1])
        close = difflib.get_close_matches(field, list(parent.model_fields), n=1, cutoff=0.6)
        hint = f"did you mean `{close[0]}`?" if close else f"allowed: {', '.join(parent.model_fields)}"
        return UserError(f"{where}: unknown key `{key}`", hint)
    value = err.get("input")
    allowed = err.get("ctx", {}).get("expected") or err["msg"]
    return UserError(f"{where}: bad value for `{key}`: {value!r}", f"{allowed}")


def _dotted(loc: tuple) -> str:
    """('curriculum', 'phases', 1, 'weights', 'coding') -> curriculum.phases[1].weights.coding"""
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def dump_resolved(config: RunConfig, path: str | Path) -> None:
    """The resolved config in the run folder, written whole or not at all."""
    import os

    path = Path(path)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    os.replace(tmp, path)
