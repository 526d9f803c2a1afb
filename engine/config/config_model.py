"""The model keys of the run config: the base model, its data sets and how a conversation is
rendered into tokens (template, special tokens, which tokens carry loss), the adapter trained on
it and how the model is loaded (quantization, kernels). A part of ``RunConfig``
(``engine.config.config``), which combines the parts in the order the resolved config is written.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator

from engine.config import chat_templates
from engine.config.config_datasets import DatasetSpec, PathText


class ModelKeys(BaseModel):
    """The base model, its data and template, the adapter and how the model is loaded."""

    base_model: PathText
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

    @field_validator("chat_template")
    @classmethod
    def _chat_template(cls, v: str) -> str:
        if not chat_templates.is_known(v):
            raise ValueError(
                f"chat_template {v!r} is not tokenizer_default, jinja or one of Axolotl's names: "
                + ", ".join(chat_templates.names())
            )
        return v

    @property
    def quant_bits(self) -> int | None:
        if self.adapter == "qlora" or self.load_in_4bit:
            return 4
        return 8 if self.load_in_8bit else None
