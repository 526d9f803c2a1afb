"""Load a checkpoint or a model folder for inference: chat, evaluation, merge.

A LoRA checkpoint names its base in ``adapter_config.json``; ``base`` overrides it. The
base loads through the same path as in training (causal LM or image-text-to-text).
"""

from __future__ import annotations

import json
import re
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


def adapter_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of a saved adapter, read from the safetensors header (no weights loaded)."""
    folder = Path(path)
    file = folder / "adapter_model.safetensors"
    if not file.is_file():
        raise UserError(
            f"{folder}: no adapter_model.safetensors (an incomplete or foreign checkpoint)",
            "pick a complete checkpoint-N folder",
        )
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except Exception as e:  # safetensors raises its own error types
        raise UserError(f"{file}: unreadable ({e})", "pick another checkpoint") from None


def check_adapter_fits(model, path: str | Path, base_name: str | None = None) -> None:
    """Raise a clear UserError when the LoRA checkpoint at ``path`` does not fit ``model``.

    Compares every LoRA matrix with the layer it would sit on: ``lora_A`` is [r, in] and
    ``lora_B`` is [out, r]. A checkpoint trained on another base of the same shapes fits
    (and loads); the base named in its adapter_config.json is quoted in the message.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such checkpoint folder", "pick one from the list or check the path")
    if not (folder / "adapter_config.json").is_file():
        raise UserError(
            f"{folder}: not a LoRA checkpoint (no adapter_config.json)", "pick a checkpoint-N folder"
        )
    trained_on = adapter_base(folder) or "an unnamed base"
    root = model.get_base_model() if hasattr(model, "get_base_model") else model
    for key, shape in adapter_shapes(folder).items():
        m = re.match(r"^(?:base_model\.model\.)?(.+)\.lora_([AB])\.weight$", key)
        if not m or len(shape) != 2:
            continue
        module_path, which = m.groups()
        try:
            layer = root.get_submodule(module_path)
        except AttributeError:
            raise _misfit(
                folder, trained_on, base_name, f"layer {module_path} is not in this model"
            ) from None
        layer = getattr(layer, "base_layer", layer)
        want_in, want_out = getattr(layer, "in_features", None), getattr(layer, "out_features", None)
        got = shape[1] if which == "A" else shape[0]
        want = want_in if which == "A" else want_out
        if want is not None and got != want:
            side = "input" if which == "A" else "output"
            raise _misfit(
                folder,
                trained_on,
                base_name,
                f"{module_path} has {side} size {want} here, {got} in the checkpoint",
            )


def _misfit(folder: Path, trained_on: str, base_name: str | None, detail: str) -> UserError:
    here = f"the model in memory ({base_name})" if base_name else "the model in memory"
    return UserError(
        f"{folder} was trained on {trained_on} and does not fit {here}: {detail}",
        "chat with checkpoints of this base, or run `leviathan-cockpit chat CHECKPOINT --base BASE` with its own base",
    )


def load_for_inference(path: str, base: str | None = None, dtype=None, device: str | None = None) -> Loaded:
    import torch

    from engine.model.model import load_base, load_tokenizer, pick_dtype, resolve_base

    base_name, adapter = resolve(path, base)
    base_name = resolve_base(base_name)
    dtype = dtype or pick_dtype("auto")
    # The tokenizer saved with the checkpoint carries the chat template the run trained with.
    tokenizer = load_tokenizer(adapter or base_name)
    model = load_base(base_name, quant_bits=None, dtype=dtype)
    if adapter:
        from peft import PeftModel

        check_adapter_fits(model, adapter, base_name)
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
    from engine.model.inference_kernels import apply_inference_kernels
    from engine.model.siblings import relayout

    relayout(model)  # where it ends up: decode reads q/k/v and gate/up as one product each
    apply_inference_kernels(model)
    return Loaded(model, tokenizer, base_name, adapter)
