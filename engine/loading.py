"""Load a checkpoint or a model folder for inference: chat, evaluation, merge.

A LoRA checkpoint names its base in ``adapter_config.json``; ``base`` overrides it. The
base loads through the same path as in training (causal LM or image-text-to-text).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from engine.errors import UserError


@dataclass
class Loaded:
    model: object
    tokenizer: object
    base: str
    adapter: str | None


def adapter_base(path: str | Path) -> str | None:
    """The base model an adapter folder was trained on, or None for a plain model folder."""
    cfg = Path(path) / "adapter_config.json"
    if not cfg.is_file():
        return None
    try:
        return json.loads(cfg.read_text())["base_model_name_or_path"]
    except (ValueError, KeyError):
        raise UserError(f"{cfg}: not a valid adapter config", "point at a checkpoint-N folder") from None


def resolve(path: str, base: str | None = None) -> tuple[str, str | None]:
    """(base model, adapter folder or None) for a checkpoint, a model folder or a hub id."""
    p = Path(path)
    if p.is_dir() and (p / "adapter_config.json").is_file():
        return base or adapter_base(p), str(p)
    if p.is_dir() and not (p / "config.json").is_file():
        raise UserError(
            f"{path}: neither a checkpoint (no adapter_config.json) nor a model folder (no config.json)",
            "give a checkpoint-N folder, a merged model folder, or a hub id in the local cache",
        )
    if not p.exists() and (path.startswith((".", "/")) or path.count("/") > 1):
        raise UserError(f"{path}: no such folder", "check the path")
    return base or path, None


def load_for_inference(path: str, base: str | None = None, dtype=None, device: str | None = None) -> Loaded:
    import torch

    from engine.model import load_base, load_tokenizer, pick_dtype, resolve_base

    base_name, adapter = resolve(path, base)
    base_name = resolve_base(base_name)
    dtype = dtype or pick_dtype("auto")
    # The tokenizer saved with the checkpoint carries the chat template the run trained with.
    tokenizer = load_tokenizer(adapter or base_name)
    model = load_base(base_name, quant_bits=None, dtype=dtype)
    if adapter:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, adapter, adapter_name="default")
        except (RuntimeError, ValueError, KeyError) as e:
            raise UserError(
                f"{adapter}: this adapter does not fit base model {base_name} ({str(e).splitlines()[0][:200]})",
                "pass --base with the model the checkpoint was trained on",
            ) from None
    model.eval()
    if device:
        model.to(device)
    elif torch.cuda.is_available():
        model.to("cuda")
    return Loaded(model, tokenizer, base_name, adapter)
