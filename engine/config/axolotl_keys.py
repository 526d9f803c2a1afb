"""What each Axolotl key becomes here: honoured, mapped with a note, noted, or refused.

``translate`` turns the top level of an Axolotl YAML into the fields of ``RunConfig``:

- honoured: a ``RunConfig`` field of the same name and meaning (passed through);
- mapped: an Axolotl key whose effect the engine reaches its own way; it becomes one of our
  fields or nothing, and a note in the run log says what it became;
- noted: a key that changes nothing about the trained weights here (logging integrations,
  speed-only kernels); a note says so;
- refused: a key that would change training in a way this engine does not do, with the reason.

An empty value (``key:`` with nothing after it) means "not set", as in Axolotl: it is dropped
without a word for any key Axolotl or this engine knows. Every problem is returned, none raised,
so a config gets one report. Stdlib only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from engine.config.axolotl_schema import AXOLOTL_KEYS

LOGGING = "this logging integration is not built in (W&B, TensorBoard and MLflow are); the run log and cockpit replace it"
ATTENTION = (
    "the engine picks its attention: varlen flash kernels per packed document on CUDA (the "
    "flash_attention_2 math), exact per-document SDPA otherwise"
)
SPEED_ONLY = "a speed-only kernel in Axolotl (the same LoRA math); PEFT's LoRA layers are used here"

NOTED_KEYS = {
    **dict.fromkeys(("trackio_project_name", "trackio_run_name", "trackio_space_id"), LOGGING),
    **dict.fromkeys(
        ("use_swanlab", "swanlab_project", "swanlab_experiment_name", "swanlab_description", "swanlab_mode"),
        LOGGING,
    ),
    **dict.fromkeys(
        ("swanlab_log_completions", "use_otel_metrics", "otel_metrics_host", "otel_metrics_port"), LOGGING
    ),
    **dict.fromkeys(("flash_attention", "sdp_attention", "xformers_attention", "flex_attention"), ATTENTION),
    **dict.fromkeys(("flash_attn_cross_entropy", "flash_attn_rms_norm", "flash_attn_fuse_mlp"), ATTENTION),
    **dict.fromkeys(("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel", "fused_attn_kernel"), SPEED_ONLY),
    "use_kernels": "Hub kernels are not loaded; the engine picks its kernels (Liger where installed)",
    "strict": "has no meaning here",
    "debug": "has no meaning here",
    "tokenizer_type": "the tokenizer always loads with AutoTokenizer",
    "tokenizer_use_fast": "the tokenizer always loads as a fast tokenizer (needed for the loss masks)",
    "tokenizer_legacy": "has no meaning for fast tokenizers",
    "processor_type": "text-only training: the tokenizer is loaded, no processor (image rows are refused)",
    "model_type": "the model class is chosen from its config (causal LM or image-text-to-text)",
    "is_llama_derived_model": "has no meaning here",
    "is_qwen_derived_model": "has no meaning here",
    "is_mistral_derived_model": "has no meaning here",
    "pad_to_sequence_len": "packed batches are padding-free",
    "skip_prepare_dataset": "rows are tokenized before training starts, as always here",
    "remove_unused_columns": "only token columns reach the model",
    "shuffle_merged_datasets": "the trainer shuffles the rows of all datasets together",
    "local_rank": "set by the launcher",
    "hub_model_id": "use `leviathan-cockpit push`",
    "hf_use_auth_token": "nothing is downloaded at run time; the local Hugging Face cache is used",
    "eval_table_size": "has no meaning here",
    "eval_max_new_tokens": "generation length for checks is `evaluation.max_new_tokens`",
    "group_by_length": "packing already groups by length",
    "low_cpu_mem_usage": "weights always load straight to their device",
    "save_only_model": "checkpoints keep the optimizer state so that a run resumes exactly",
    "gradient_checkpointing_kwargs": "checkpointing here is always non-reentrant (the same gradients)",
    "bfloat16": "the model loads in bf16 whenever `bf16` is on (auto: where the GPU has it)",
    "torchdistx_path": "has no meaning here",
    "torch_compile": "torch.compile changes speed, not the result; this engine does not compile the model",
    "torch_compile_mode": "torch.compile is not used here",
}

UNSUPPORTED_KEYS = {
    "gptq": "GPTQ models are not supported; use adapter: qlora",
    "peft_use_dora": "DoRA is not supported",
    "lora_fan_in_fan_out": "the transposed (Conv1D, GPT-2 style) weight layout is not supported; models here use nn.Linear",
    "lora_modules_to_save": "training extra full modules is not supported",
    "lora_target_parameters": "LoRA on raw parameters (MoE experts) is not supported; target linear modules",
    "rl": "RL training is not supported; this is supervised fine-tuning",
    "fp16": "fp16 training is not supported; use bf16 (or fp32 where bf16 is missing)",
    "float16": "fp16 weights are not supported; use bf16",
    "relora_steps": "ReLoRA is not supported",
    "relora": "ReLoRA is not supported",
    "max_packed_sequence_len": "use sequence_len with sample_packing",
    "auto_resume_from_checkpoints": "resuming is automatic; see --resume",
    "quantize_moe_experts": "quantizing MoE expert weights is not supported",
    "tokenizer_use_mistral_common": "mistral-common tokenizers are not supported; use the model's tokenizer.json",
    "model_config": "overriding the model's config is not supported",
    "resize_token_embeddings_to_32x": "resizing the vocabulary is not supported",
    "cosine_constant_lr_ratio": "the constant-tail cosine schedule is not supported; use cosine_min_lr_ratio",
    "lr_quadratic_warmup": "quadratic warmup is not supported; warmup is linear",
    "full_finetune": "full fine-tuning is not supported; this engine trains LoRA adapters",
    "device_map": "one GPU per process; several GPUs through --nproc (DDP, FSDP, DeepSpeed)",
}

# Values of these keys that are the engine's behaviour already: accepted without a word.
HARMLESS = {
    "fp16": (False,),
    "float16": (False,),
    "gptq": (False,),
    "rl": (False,),
}
HARMLESS |= {
    "quantize_moe_experts": (False,),
    "tokenizer_use_mistral_common": (False,),
    "full_finetune": (False,),
}
HARMLESS |= {"lr_quadratic_warmup": (False,), "peft_use_dora": (False,)}
HARMLESS |= {"cosine_constant_lr_ratio": (0, 0.0), "device_map": ("auto",)}

# Defaults that differ from Axolotl's when the key is left out: (Axolotl's value, why ours).
DEFAULTS_DIFFER = {
    "sample_packing": (False, "packing is on here (padding-free batches train several times faster)"),
    "sequence_len": (512, "2048 here, a common chat length"),
    "gradient_checkpointing": (False, "`auto` here: on only when the memory estimate needs it"),
    "lora_target_linear": (None, "every linear layer here (LoRA's usual target)"),
    "adapter": (None, "`lora` here: this engine trains adapters (Axolotl would fine-tune fully)"),
    "lora_r": (None, "16 here"),
    "lora_alpha": (None, "32 here"),
    "learning_rate": ("required", "2e-4 here"),
    "logging_steps": (500, "1 here: every step is in the run log"),
    "output_dir": ("./model-out", "./outputs/run here"),
}

PLUGINS = {
    "axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin": (
        "the fused loss: Liger's fused linear cross-entropy where liger-kernel and a CUDA GPU are "
        "there (the full logits are never materialised), the plain loss otherwise",
        {"fused_linear_cross_entropy": True},
    ),
    "axolotl.integrations.liger.LigerPlugin": (
        "Liger kernels where liger-kernel and a CUDA GPU are there, switched per `liger_*` key",
        {},
    ),
    "axolotl.integrations.liger.plugin.LigerPlugin": ("Liger kernels, as LigerPlugin", {}),
}

# Axolotl's liger_* keys -> the names Liger's apply functions take (transformers' liger_kernel_config).
LIGER = {
    "liger_rope": "rope",
    "liger_rms_norm": "rms_norm",
    "liger_glu_activation": "swiglu",
    "liger_layer_norm": "layer_norm",
    "liger_fused_linear_cross_entropy": "fused_linear_cross_entropy",
    "liger_cross_entropy": "cross_entropy",
    "liger_rms_norm_gated": "rms_norm_gated",
    "cut_cross_entropy": "fused_linear_cross_entropy",
}


@dataclass
class Translation:
    data: dict = field(default_factory=dict)
    notes: list[tuple[tuple, str]] = field(default_factory=list)
    """(key path, text): what a mapped or noted key became."""
    problems: list[tuple[tuple, str, str]] = field(default_factory=list)
    """(key path, message, fix)."""
    omitted_defaults: list[str] = field(default_factory=list)
    to_datasets: dict = field(default_factory=dict)
    """Top-level keys Axolotl applies to every dataset: set on each entry that lacks them."""


def _empty(value) -> bool:
    return value is None


def _plugins(t: Translation, value) -> None:
    if not isinstance(value, list):
        t.problems.append(
            (("plugins",), "`plugins` must be a list of plugin class paths", "write `- NAME` lines")
        )
        return
    for i, name in enumerate(value):
        if name in PLUGINS:
            note, liger = PLUGINS[name]
            t.data.setdefault("liger_kernels", {}).update(liger)
            t.notes.append((("plugins", i), f"`{name}` -> {note}"))
        else:
            t.problems.append(
                (("plugins", i), f"the Axolotl plugin `{name}` has no equivalent in this engine", "remove it")
            )


def _attn(t: Translation, value) -> None:
    t.notes.append((("attn_implementation",), f"`attn_implementation: {value}` -> {ATTENTION}"))


def _gc_offload(t: Translation, value) -> None:
    if value in ("offload", "offload_disk"):
        t.data["gradient_checkpointing"] = "offload"
        if value == "offload_disk":
            t.notes.append(
                (
                    ("gradient_checkpointing",),
                    "`offload_disk` -> `offload`: checkpoints go to CPU memory, not disk",
                )
            )
    elif t.data.get("gradient_checkpointing") != "offload":
        t.data["gradient_checkpointing"] = value


def _save_strategy(t: Translation, value) -> None:
    if value == "epoch":
        t.data.setdefault("saves_per_epoch", 1)
    elif value == "best":
        t.notes.append((("save_strategy",), "`best` -> guard.save_best: each new best eval_loss is saved"))
    elif value == "no":
        t.data["save_steps"] = None
    elif value != "steps":
        t.problems.append(
            (("save_strategy",), f"save_strategy {value!r} is not steps, epoch, best or no", "")
        )


def _eval_strategy(key: str) -> Callable:
    def apply(t: Translation, value) -> None:
        if value == "epoch":
            t.data.setdefault("evals_per_epoch", 1)
        elif value == "no":
            t.data["evals_per_epoch"] = 0
        elif value != "steps":
            t.problems.append(((key,), f"{key} {value!r} is not steps, epoch or no", ""))

    return apply


def _activation_offloading(t: Translation, value) -> None:
    if value:  # true or "legacy": activations offloaded to the CPU between forward and backward
        t.data["gradient_checkpointing"] = "offload"
        t.notes.append(
            (
                ("activation_offloading",),
                "-> `gradient_checkpointing: offload` (checkpointed activations in CPU memory)",
            )
        )


def _chat_template_kwargs(t: Translation, value) -> None:
    t.to_datasets["chat_template_kwargs"] = value
    t.notes.append(
        (("chat_template_kwargs",), "-> every dataset's `chat_template_kwargs` (the template's variables)")
    )


VISION_NAMES = ("visual", "vision", "multi_modal_projector", "image")


def _unfrozen(t: Translation, value, adapter) -> None:
    """Axolotl freezes every parameter its patterns do not list. With an adapter the base weights
    stay frozen here anyway and the vision tower is never touched, so patterns that only keep the
    language model (Gemma 3's examples: "freeze vision tower") change nothing; patterns that would
    train the vision tower, or any use without an adapter (full fine-tuning), are refused."""
    patterns = value if isinstance(value, list) else [value]
    vision = [p for p in patterns if any(v in str(p) for v in VISION_NAMES)]
    if adapter in ("lora", "qlora") and not vision:
        t.notes.append(
            (
                ("unfrozen_parameters",),
                "changes nothing here: LoRA keeps every base weight frozen and the adapters go on the "
                "language model's linear layers only (the vision tower stays frozen)",
            )
        )
        return
    why = (
        f"training the vision tower ({', '.join(map(str, vision))}) is not supported"
        if vision
        else "full fine-tuning of chosen parameters is not supported; this engine trains LoRA adapters"
    )
    t.problems.append(
        (
            ("unfrozen_parameters",),
            f"`unfrozen_parameters`: {why}.",
            "remove `unfrozen_parameters` (and use an adapter)",
        )
    )


MAPPED: dict[str, Callable[[Translation, object], None]] = {
    "chat_template_kwargs": _chat_template_kwargs,
    "activation_offloading": _activation_offloading,
    "plugins": _plugins,
    "attn_implementation": _attn,
    "gradient_checkpointing": _gc_offload,
    "save_strategy": _save_strategy,
    "eval_strategy": _eval_strategy("eval_strategy"),
    "evaluation_strategy": _eval_strategy("evaluation_strategy"),
}


def translate(raw: dict, fields: set[str]) -> Translation:
    """Our ``RunConfig`` data from an Axolotl top level; ``fields`` are RunConfig's field names."""
    t = Translation()
    for key, value in raw.items():
        skey = str(key)
        known = skey in fields or skey in AXOLOTL_KEYS or skey in NOTED_KEYS or skey in UNSUPPORTED_KEYS
        if skey == "adapter" and _empty(value):  # Axolotl's full fine-tuning, written out
            t.problems.append(
                (
                    ("adapter",),
                    "`adapter:` is empty, which is full fine-tuning in Axolotl; this engine trains LoRA adapters",
                    "set `adapter: lora` (or qlora)",
                )
            )
            continue
        if known and _empty(value):
            continue  # "not set"
        if skey in LIGER:
            t.data.setdefault("liger_kernels", {})[LIGER[skey]] = bool(value)
            t.notes.append(
                (
                    (skey,),
                    f"`{skey}: {value}` -> Liger's `{LIGER[skey]}` kernel where liger-kernel and CUDA are there",
                )
            )
        elif skey == "unfrozen_parameters":
            _unfrozen(t, value, raw.get("adapter"))
        elif skey in MAPPED:
            MAPPED[skey](t, value)
        elif skey in fields:
            t.data[skey] = value
        elif skey in NOTED_KEYS:
            t.notes.append(((skey,), f"`{skey}` has no effect here: {NOTED_KEYS[skey]}"))
        elif skey in UNSUPPORTED_KEYS:
            if value in HARMLESS.get(skey, ()):
                continue
            t.problems.append(
                (
                    (skey,),
                    f"`{skey}` is an Axolotl key this engine does not support: {UNSUPPORTED_KEYS[skey]}.",
                    f"remove `{skey}` from the config",
                )
            )
        elif skey in AXOLOTL_KEYS:
            t.problems.append(
                (
                    (skey,),
                    f"`{skey}` is an Axolotl key this engine does not support (no equivalent here).",
                    f"remove `{skey}` from the config",
                )
            )
        else:
            t.problems.append(((skey,), f"unknown key `{skey}`", ""))  # the caller adds "did you mean"
    for ds in t.data.get("datasets") or []:
        if isinstance(ds, dict):
            for k, v in t.to_datasets.items():
                ds.setdefault(k, v)
    t.omitted_defaults = [
        f"`{k}` is not set: Axolotl's default is {v[0]!r}; {v[1]}"
        for k, v in DEFAULTS_DIFFER.items()
        if raw.get(k) is None and not (k == "lora_target_linear" and raw.get("lora_target_modules"))
    ]
    return t
