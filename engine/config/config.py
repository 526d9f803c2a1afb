"""YAML -> a validated run config, with Axolotl's key names.

A user brings their Axolotl file unchanged. Every key is one of:

- honoured: a field of ``RunConfig`` below, applied exactly;
- mapped or noted: a known Axolotl key reached the engine's own way, or with no effect on the
  result (``engine.config.axolotl_keys`` says which and why); a note says so in the run log and on stderr;
- unsupported: a known Axolotl key that would change training and that we do not do;
  refused by name with the reason (exit 2), never silently ignored;
- unknown: refused, with "did you mean ..." where a key of related meaning is close.

An empty value means "not set". Every problem of a file comes in one report (``config_report``).

Paths: a relative dataset or model path is looked up first in the config file's folder,
then in the current directory (Axolotl's own rule, so configs used from a project root
keep working). A relative ``output_dir`` or ``logs_dir`` is taken from the current
directory, as Axolotl does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from engine.config import chat_templates
from engine.config.axolotl_keys import NOTED_KEYS, UNSUPPORTED_KEYS, translate
from engine.config.config_dist import FSDP_OPTIONS, DistributedConfig, FsdpConfig
from engine.config.config_report import KeyError_, Problem, explain, key_lines, report, suggest
from engine.config.config_report import where as _where
from engine.config.config_sections import (
    ChatConfig,
    ChatPresetSpec,
    CurriculumConfig,
    CurriculumPhase,
    ExportConfig,
    GuardConfig,
    HealthConfig,
)
from engine.config.evalconfig import ChecklistConfig, EvaluationConfig
from engine.config.yamlload import BOOLEAN_FIX, boolean_problems, load_yaml
from engine.errors import UserError

__all__ = [
    "FSDP_OPTIONS",
    "NOTED_KEYS",
    "UNSUPPORTED_KEYS",
    "ChatConfig",
    "ChatPresetSpec",
    "CurriculumConfig",
    "CurriculumPhase",
    "DistributedConfig",
    "ExportConfig",
    "FsdpConfig",
    "GuardConfig",
    "HealthConfig",
    "KeyError_",
    "RunConfig",
    "load_config",
    "validate",
]


class DatasetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    path: str
    """A local file (.jsonl, .jsonl.gz, .json, .parquet, .arrow), a folder of them, or a hub
    dataset id already in the local Hugging Face cache (nothing is downloaded)."""
    type: str = "chat_template"
    """chat_template: OpenAI ``messages``; sharegpt: ``conversations`` with from/value; alpaca:
    instruction/input/output in Axolotl's ``### Instruction:`` prompt; completion: raw ``text``.
    Also Axolotl's ``chat_template.default``, ``alpaca:chat`` and ``alpaca_chat``."""
    field_messages: str | None = None
    """The key holding the turns (default ``messages``, or ``conversations`` for sharegpt)."""
    roles_to_train: list[str] | None = None
    """Roles whose turns carry loss (Axolotl's; default ``[assistant]``). ``train_on_inputs: true``
    trains every turn's text (never the template's headers)."""
    train_on_eos: Literal["turn", "last", "all", "none"] = "turn"
    """End tokens (the end-of-turn marker the template writes after a turn, and the EOS after the
    last one) that carry loss: turn: those of every trained turn; last: only the last trained
    turn's; all: those of every turn; none: no end token (the model never learns to stop)."""
    message_field_training: str | None = None
    """The message key of a per-message boolean that overrides roles_to_train for that turn
    (Axolotl's). Unset: a boolean ``training`` or ``train`` key is read where a message has one."""
    message_property_mappings: dict[str, str] | None = None
    """Which key of a turn holds what, e.g. ``{role: from, content: value}`` (FineTome, SlimOrca)."""
    message_field_role: str | None = None
    """Older spelling of ``message_property_mappings.role``."""
    message_field_content: str | None = None
    """Older spelling of ``message_property_mappings.content``."""
    roles: dict[str, list[str]] | None = None
    """Our role -> the data's role names, e.g. ``{user: [human], assistant: [gpt]}`` (added to the
    usual human/gpt/user/assistant/system names)."""
    drop_system_message: bool = False
    """Leave system turns out of every conversation."""
    split: str | None = None
    """The rows to use: ``train``, or a slice such as ``train[:20%]`` / ``train[10:100]``."""
    field: str | None = None
    """completion: the key with the text (default ``text``)."""
    name: str | None = None
    """A hub dataset's configuration name."""
    data_files: list[str] | str | None = None
    """Files inside a hub dataset or folder to read (default: all of them)."""
    ds_type: str | None = None
    """Axolotl's file-format hint (json, parquet, arrow); the format is read from the file here."""

    @model_validator(mode="before")
    @classmethod
    def _not_set(cls, data):
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        return _usable_path(v)

    @field_validator("type")
    @classmethod
    def _type(cls, v: str) -> str:
        from engine.config.dataset_kinds import canonical_type

        return canonical_type(v)

    @field_validator("split")
    @classmethod
    def _split(cls, v: str | None) -> str | None:
        from engine.config.dataset_kinds import parse_split

        if v is not None:
            parse_split(v)
        return v


def _usable_path(v: str | None) -> str | None:
    if v is not None and ("\x00" in v or not v.strip()):
        raise ValueError("a path must be non-empty and cannot contain a NUL byte")
    return v


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)
    _defaults_differ: list[str] = PrivateAttr(default_factory=list)
    """Keys left out whose Axolotl default differs from ours (``check`` and the start record say so)."""

    base_model: str
    """A local model folder or a hub id (already in the local cache: nothing is downloaded)."""
    trust_remote_code: bool = False
    datasets: list[DatasetSpec] = Field(min_length=1)
    chat_template: str = "tokenizer_default"
    """tokenizer_default (the model's own), one of Axolotl's names (chatml, llama3, qwen3, qwen_25,
    gemma3, phi_3, mistral_v7_tekken, deepseek_v3, ...: engine/config/chat_templates/), or jinja with
    chat_template_jinja. ``tokenizer_default_fallback_NAME``: the model's own, else NAME."""
    chat_template_jinja: str | None = None
    """The template text, or the path of a .jinja file."""
    special_tokens: dict[str, str] | None = None
    """bos_token / eos_token / pad_token / unk_token the tokenizer uses; each must already be one
    token of its vocabulary (a new token would need its embedding trained)."""
    tokens: list[str] | None = None
    """Tokens the vocabulary must hold (checked; new ones are refused, as above)."""
    eot_tokens: list[str] | None = None
    """Tokens that end a turn (e.g. ``<|im_end|>``); each must be one token of the vocabulary."""
    train_on_inputs: bool = False
    """False: loss on assistant tokens only (Axolotl's default)."""

    adapter: Literal["lora", "qlora"] = "lora"
    lora_r: int = Field(16, gt=0)
    lora_alpha: int = Field(32, gt=0)
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    lora_target_linear: bool | None = None
    """True: every linear layer of the language model (never the vision tower or lm_head), plus
    lora_target_modules if given. Unset: the same when lora_target_modules is not given."""
    lora_target_modules: list[str] | str | None = None
    """Module names (a list), or a regular expression matched against full module names (a
    string, as PEFT and Axolotl take it). With lora_target_linear: both (Axolotl's union)."""
    lora_model_dir: str | None = None
    """Start from this LoRA adapter (a folder with adapter_config.json) instead of a new one."""
    peft_use_rslora: bool = False
    """rsLoRA: scale by lora_alpha / sqrt(r) instead of lora_alpha / r."""
    liger_kernels: dict[str, bool] | None = None
    """Liger kernels by name (rope, rms_norm, swiglu, layer_norm, fused_linear_cross_entropy, ...);
    set from Axolotl's ``liger_*`` keys and plugins. Unset: all of them where liger-kernel and CUDA
    are there."""
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

    # -- several GPUs (see engine/train/dist.py and README "Several GPUs") --
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

    @field_validator("optimizer")
    @classmethod
    def _optimizer(cls, v: str) -> str:
        from engine.config.optimizers import OPTIMIZERS

        if v not in OPTIMIZERS:
            raise ValueError(f"optimizer {v!r} is not one of {', '.join(OPTIMIZERS)}")
        return v

    @field_validator("chat_template")
    @classmethod
    def _chat_template(cls, v: str) -> str:
        if not chat_templates.is_known(v):
            raise ValueError(
                f"chat_template {v!r} is not tokenizer_default, jinja or one of Axolotl's names: "
                + ", ".join(chat_templates.names())
            )
        return v

    @field_validator("val_set_size")
    @classmethod
    def _whole_count(cls, v: float) -> float:
        if v >= 1 and v != int(v):
            raise ValueError("a count of rows must be a whole number (or use a fraction below 1)")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        if self.load_in_4bit and self.load_in_8bit:
            raise KeyError_(("load_in_8bit",), "load_in_4bit and load_in_8bit: choose one", "drop one")
        if self.adapter == "qlora" and self.load_in_8bit:
            raise KeyError_(("load_in_8bit",), "adapter: qlora quantizes to 4 bits", "drop load_in_8bit")
        if self.chat_template == "jinja" and not self.chat_template_jinja:
            raise KeyError_(
                ("chat_template",),
                "chat_template: jinja needs chat_template_jinja",
                "add `chat_template_jinja:`",
            )
        for a, b in (("evals_per_epoch", "eval_steps"), ("saves_per_epoch", "save_steps")):
            if getattr(self, a) is not None and getattr(self, b) is not None:
                raise KeyError_((a,), f"`{a}` and `{b}` both set the same interval", "keep one of them")
        fsdp_ac = self.fsdp_config is not None and self.fsdp_config.activation_checkpointing
        if self.gradient_checkpointing == "offload" and fsdp_ac:
            raise KeyError_(
                ("gradient_checkpointing",), "offload and FSDP's activation checkpointing", "keep one"
            )
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
            raise KeyError_(
                ("deepspeed",), "deepspeed and fsdp/fsdp_config are two ways to shard", "choose one"
            )
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
        raw = load_yaml(text, file)  # duplicate keys refused, with both lines
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
    """All of a config's problems in one UserError; else the config and its notes."""
    lines = key_lines(text)
    t = translate(raw, set(RunConfig.model_fields))
    notes = [f"{_where(str(file), lines, loc)}: {text}" for loc, text in t.notes]
    problems = []
    for loc, message, fix in t.problems:
        if message.startswith("unknown key"):
            close = suggest(str(loc[-1]), KNOWN_KEYS)
            fix = f"did you mean `{close}`?" if close else "see README.md for the keys"
        problems.append(Problem(_where(str(file), lines, loc), message, fix))
    data = {**t.data, **(overrides or {})}
    problems += [Problem(w, m, BOOLEAN_FIX) for w, m in boolean_problems(data, RunConfig, file, text)]
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as e:
        problems += explain(e, RunConfig, file, lines)
    if problems:
        raise report(problems)
    config._defaults_differ = t.omitted_defaults
    base = file.resolve().parent
    for ds in config.datasets:
        ds.path = _resolve_path(ds.path, base)
    config.base_model = _resolve_path(config.base_model, base)
    if config.lora_model_dir:
        config.lora_model_dir = _resolve_path(config.lora_model_dir, base)
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


def dump_resolved(config: RunConfig, path: str | Path) -> None:
    """The resolved config in the run folder, written whole or not at all."""
    import os

    path = Path(path)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    os.replace(tmp, path)
