"""Base model, tokenizer and LoRA/QLoRA adapter, loaded the way a real checkpoint loads.

Causal LMs load through ``AutoModelForCausalLM``; vision-language models (Qwen3-VL) through
``AutoModelForImageTextToText``, trained on text only: LoRA goes on the language model's
linear layers and the vision tower stays frozen and untouched. Nothing is downloaded: a
hub id must already be in the local cache.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from engine import faults
from engine.errors import UserError

VISION_PARTS = ("visual", "vision_tower", "vision_model", "multi_modal_projector", "image_newline")


def resolve_base(base_model: str) -> str:
    """The model folder or hub id to load; a local folder is checked first (a clear message,
    before any work, for an empty folder or a config.json that will not load)."""
    if base_model.startswith("builtin:"):
        from engine.model.tiny import demo_model_path

        return str(demo_model_path())
    if Path(base_model).is_dir():
        check_model_folder(Path(base_model))
    return base_model


def check_model_folder(folder: Path) -> None:
    """Raise a UserError naming what is wrong with a local model folder's config.json."""
    import json

    cfg = folder / "config.json"
    if not any(folder.iterdir()):
        raise UserError(
            f"base_model {folder}: the folder is empty",
            "point base_model at the folder holding config.json and the weights (or a hub id in the cache)",
        )
    if not cfg.is_file():
        raise UserError(
            f"base_model {folder}: no config.json in this folder", "point base_model at a model folder"
        )
    fix = "restore config.json (download the model again if it was cut short)"
    try:
        raw = json.loads(cfg.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{cfg}:{e.lineno}:{e.colno}: not valid JSON ({e.msg}); truncated?", fix) from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{cfg}: cannot be read ({e})", fix) from None
    if not isinstance(raw, dict):
        raise UserError(f"{cfg}: not a JSON object (a {type(raw).__name__})", fix)
    model_type = raw.get("model_type")
    if raw.get("auto_map"):
        return  # the model ships its own code (trust_remote_code decides)
    from transformers import __version__
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING_NAMES:
        what = f"model_type {model_type!r} is not known" if model_type else "no model_type, which is needed"
        raise UserError(
            f"{cfg}: {what} to transformers {__version__}",
            "check model_type in config.json, or upgrade transformers if the model is newer than it",
        )


def _hub_error(name: str) -> UserError:
    return UserError(
        f"base_model `{name}` is not a local folder and is not in the local Hugging Face cache "
        "(nothing is downloaded at run time)",
        f"download it once with `hf download {name}`, or point base_model at a model folder",
    )


def load_model_config(name: str, trust_remote_code: bool = False):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name, local_files_only=True, trust_remote_code=trust_remote_code)
    except ValueError as e:  # e.g. custom code without trust_remote_code, an unknown model_type
        raise UserError(
            f"base_model {name}: its config does not load ({str(e).strip().splitlines()[0][:300]})",
            "set trust_remote_code: true if the model ships its own code, or check its config.json",
        ) from None
    except OSError:
        if Path(name).exists():
            raise UserError(
                f"{name}: no config.json in this folder", "point base_model at a model folder"
            ) from None
        raise _hub_error(name) from None


def is_vision_language(model_config) -> bool:
    return hasattr(model_config, "vision_config") or any(
        a.endswith("ForConditionalGeneration") for a in (getattr(model_config, "architectures", None) or [])
    )


def load_tokenizer(
    name: str, chat_template: str = "tokenizer_default", jinja: str | None = None, trust_remote_code=False
):
    from transformers import AutoTokenizer

    from engine.config import chat_templates

    try:
        tok = AutoTokenizer.from_pretrained(name, local_files_only=True, trust_remote_code=trust_remote_code)
    except OSError:
        if Path(name).is_dir():
            raise UserError(
                f"{name}: no tokenizer in this folder (tokenizer.json / tokenizer_config.json)",
                "point at a model folder that holds its tokenizer files",
            ) from None
        raise _hub_error(name) from None
    tok.chat_template = chat_templates.resolve(chat_template, jinja, tok.chat_template)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def pick_dtype(want_bf16):
    import torch

    cuda = torch.cuda.is_available()
    bf16_ok = cuda and torch.cuda.is_bf16_supported()
    if want_bf16 is True and not bf16_ok:
        raise UserError(
            "`bf16: true` but this machine has no GPU with bf16",
            "set `bf16: auto` (bf16 where the hardware has it, fp32 otherwise)",
        )
    return torch.bfloat16 if (bf16_ok and want_bf16 is not False) else torch.float32


def load_base(
    name: str, *, quant_bits: int | None, dtype, trust_remote_code: bool = False, attn: str | None = None
):
    """The frozen base model, quantized with bitsandbytes when asked."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    cfg = load_model_config(name, trust_remote_code)
    kwargs = dict(dtype=dtype, local_files_only=True, trust_remote_code=trust_remote_code)
    if attn:
        kwargs["attn_implementation"] = attn
    if quant_bits:
        if not torch.cuda.is_available():
            raise UserError(
                f"{quant_bits}-bit loading (adapter: qlora / load_in_{quant_bits}bit) needs an NVIDIA GPU with "
                "CUDA, and this machine has none",
                "run on a CUDA machine, or use `adapter: lora` without load_in_4bit/load_in_8bit here",
            )
        try:
            from transformers import BitsAndBytesConfig  # noqa: F401
        except ImportError:  # pragma: no cover
            raise UserError("bitsandbytes is not installed", "pip install 'leviathan-cockpit[gpu]'") from None
        kwargs["quantization_config"] = quantization_config(quant_bits)
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    auto = AutoModelForImageTextToText if is_vision_language(cfg) else AutoModelForCausalLM
    try:
        model = auto.from_pretrained(name, **kwargs)
    except OSError:
        raise _hub_error(name) from None
    faults.in_phase("load")
    if torch.cuda.is_available() and not quant_bits:
        model.to("cuda")
    return model


def quantization_config(bits: int):
    """bitsandbytes' settings for a ``bits``-bit base: NF4 with double quantization and bf16
    compute for 4 bits (QLoRA's), LLM.int8 for 8; lm_head and the vision tower stay bf16."""
    import torch
    from transformers import BitsAndBytesConfig

    skip = ["lm_head", *VISION_PARTS]
    if bits == 4:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_quant_storage=torch.bfloat16,
            llm_int8_skip_modules=skip,
        )
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)


def lora_targets(model, wanted: list[str] | None = None) -> list[str]:
    """Full names of the language model's linear layers (the vision tower and lm_head excluded)."""
    import torch

    linear_types: tuple = (torch.nn.Linear,)
    try:
        import bitsandbytes as bnb

        linear_types += (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    except ImportError:
        pass
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, linear_types):
            continue
        if any(part in name.split(".") for part in VISION_PARTS) or name.split(".")[-1] == "lm_head":
            continue
        leaf = name.split(".")[-1]
        if wanted is None or leaf in wanted or name in wanted:
            names.append(name)
    if not names:
        raise UserError(
            f"no linear layer matches lora_target_modules {wanted}",
            "use names such as q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj",
        )
    return names


def prepare_kbit(model, gradient_checkpointing: bool) -> None:
    """PEFT's prepare_model_for_kbit_training without its fp32 upcast.

    PEFT casts every non-quantized weight (norms, embeddings, lm_head) to fp32, which turns
    the whole residual stream fp32: twice the activation memory and no bf16 kernels. The
    norms are stable in bf16 (Unsloth and Axolotl train QLoRA that way), so only freeze and
    make the inputs carry gradients for checkpointing.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    if gradient_checkpointing:
        model.enable_input_require_grads()
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def attach_lora(model, config, gradient_checkpointing: bool):
    """Wrap the base in a PEFT LoRA model with the config's rank, alpha, dropout and targets,
    or load the adapter of ``lora_model_dir`` (trainable) to go on from it."""
    from engine.model.lora_autocast import fuse_lora_layers

    peft_model = _attach(model, config, gradient_checkpointing)
    # Sharded training (ZeRO-3, FSDP) gathers each module's weights in its own forward hook; the
    # fused forward reads B's (and the siblings' A) weights directly, so it stays PEFT's there.
    if not (config.deepspeed or config.uses_fsdp):
        fuse_lora_layers(peft_model)
        if not config.quant_bits and os.environ.get("LEVIATHAN_RELAYOUT") != "off":
            from engine.model.siblings import relayout

            # Training computes layer by layer as before (each weight a contiguous slice); the
            # probes and chat on the live weights decode q/k/v and gate/up as one product each.
            relayout(peft_model)
    return peft_model


def _attach(model, config, gradient_checkpointing: bool):
    from peft import LoraConfig, PeftModel, get_peft_model

    if config.quant_bits:
        prepare_kbit(model, gradient_checkpointing)
    if config.lora_model_dir:
        if not (Path(config.lora_model_dir) / "adapter_config.json").is_file():
            raise UserError(
                f"lora_model_dir {config.lora_model_dir}: no adapter_config.json there",
                "point lora_model_dir at a saved LoRA adapter (a checkpoint folder)",
            )
        return PeftModel.from_pretrained(model, config.lora_model_dir, is_trainable=True)
    targets = chosen_targets(model, config)
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=_compact_regex(targets),
        use_rslora=config.peft_use_rslora,
        task_type="CAUSAL_LM",
        bias="none",
    )
    return get_peft_model(model, lora)


def chosen_targets(model, config) -> list[str]:
    """lora_target_linear and lora_target_modules together (Axolotl takes the union); a string
    ``lora_target_modules`` is a regular expression over full module names (PEFT's rule)."""
    wanted = config.lora_target_modules
    if isinstance(wanted, str):
        try:
            pattern = re.compile(wanted)
        except re.error as e:
            raise UserError(
                f"lora_target_modules is not a valid regular expression ({e})", "fix the pattern"
            ) from None
        names = [n for n in lora_targets(model) if pattern.fullmatch(n)]
        if not names and config.lora_target_linear is not True:
            raise UserError(
                f"no linear layer's full name matches lora_target_modules {wanted!r}",
                "match names such as model.layers.0.self_attn.q_proj, or give a list of short names",
            )
    else:
        names = lora_targets(model, wanted) if wanted else []
    if config.lora_target_linear or (config.lora_target_linear is None and not wanted) or not names:
        names = sorted(set(names) | set(lora_targets(model)))
    return names


def check_tokens(tok, config) -> None:
    """special_tokens, tokens and eot_tokens must be tokens the vocabulary has; special_tokens
    become the tokenizer's (e.g. Axolotl's usual ``pad_token: <|end_of_text|>``)."""
    vocab = tok.get_vocab()
    missing = [t for t in (config.special_tokens or {}).values() if t not in vocab]
    missing += [t for t in (config.tokens or []) + (config.eot_tokens or []) if t not in vocab]
    if missing:
        raise UserError(
            "not tokens of this tokenizer's vocabulary: "
            + ", ".join(repr(t) for t in dict.fromkeys(missing)),
            "use tokens the model already has: adding one needs its embedding trained, which LoRA "
            "here does not do (Axolotl would add it and train lm_head/embed_tokens in full)",
        )
    for name, token in (config.special_tokens or {}).items():
        if name in ("bos_token", "eos_token", "pad_token", "unk_token"):
            setattr(tok, name, token)


def _compact_regex(targets: list[str]) -> str:
    # Layer-indexed names collapse to one pattern per shape: model.layers.\d+.self_attn.q_proj
    shapes = sorted({re.sub(r"\.\d+\.", ".#.", t) for t in targets})
    parts = [re.escape(s).replace("\\#", r"\d+").replace("#", r"\d+") for s in shapes]
    return "^(?:" + "|".join(parts) + ")$"
