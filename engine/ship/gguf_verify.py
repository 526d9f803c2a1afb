"""Check a written GGUF against the merged model it came from: every tensor, read back and dequantized.

The GGUF is read with llama.cpp's ``gguf`` reader and each tensor dequantized with its
``gguf.quants``; the merged model's safetensors are read one tensor at a time. Names are matched
through gguf-py's tensor-name table (``TensorNameMap``), not through the converter's own code, and
the two transforms llama.cpp's converter is known to apply are redone here by hand: Llama/Mistral's
q/k rows reordered for llama.cpp's rotary layout, Gemma's norms stored as ``1 + w``.

The allowed error of a value ``x`` is a property of its storage type, so every element is checked:

- F32: exact (the merged weights are fp32 or bf16, both exact in f32).
- F16: round-to-nearest, |err| <= 2^-11 |x| (half an ulp), plus 2^-25 below f16's normal range.
- BF16: |err| <= 2^-8 |x|.
- Q8_0: blocks of 32 along a row, scale d = max|x| / 127 stored as f16, q = round(x / d): half a
  step from rounding plus |q| <= 127 times the f16 rounding of d, so |err| <= d (1/2 + 127 * 2^-11).
- Q4_K / Q5_K / Q6_K (llama.cpp's quantizer): sub-blocks of 32 whose scale and minimum are
  themselves 6-/8-bit quantized, so rounding is not the only error; allowed one full step (not half)
  of the sub-block's range: range/15, range/31, and 2 max|x|/63.

A tensor of the merged model the GGUF lacks is a failure, except a vision tower's (the text GGUF
leaves it out on purpose) and a tied ``lm_head``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

VISION_PREFIXES = (
    "model.visual.",
    "visual.",
    "model.vision_tower.",
    "vision_tower.",
    "model.multi_modal_projector.",
)
TEXT_PREFIXES = (
    ("model.language_model.", "model."),
    ("language_model.model.", "model."),
    ("language_model.", ""),
)
F16_REL, F16_ABS, BF16_REL = 2.0**-11, 2.0**-25, 2.0**-8


@dataclass
class TensorCheck:
    quant: str
    path: Path
    tensors: int = 0
    by_type: dict = field(default_factory=dict)  # GGML type -> [count, max |err|, max err/allowed]
    skipped_vision: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and self.tensors > 0

    def summary(self) -> str:
        parts = [
            f"{t} x{n} max|err| {e:.2e} ({r:.0%} of allowed)" for t, (n, e, r) in sorted(self.by_type.items())
        ]
        return f"{self.tensors} tensors: " + "; ".join(parts)

    def record(self) -> dict:
        return {
            "tensors": self.tensors,
            "ok": self.ok,
            "by_type": {
                t: {"count": n, "max_abs_err": e, "of_allowed": r} for t, (n, e, r) in self.by_type.items()
            },
            "vision_tensors_left_out": self.skipped_vision,
            "problems": self.problems[:20],
        }


def allowed_error(ref: np.ndarray, qtype: str) -> np.ndarray | None:
    """Per-element bound on |dequantized - ref| for the storage type; None for a type not checked."""
    a = np.abs(ref)
    if qtype == "F32":
        return np.zeros_like(a)
    if qtype == "F16":
        return a * F16_REL + F16_ABS
    if qtype == "BF16":
        return a * BF16_REL
    steps = {"Q8_0": None, "Q4_K": 15, "Q5_K": 31, "Q6_K": None}
    if qtype not in steps or ref.shape[-1] % 32:
        return None
    blocks = ref.reshape(-1, 32)
    amax = np.abs(blocks).max(axis=1, keepdims=True)
    if qtype == "Q8_0":
        bound = amax / 127 * (0.5 + 127 * F16_REL)
    elif qtype == "Q6_K":
        bound = 2 * amax / 63
    else:
        bound = (blocks.max(axis=1, keepdims=True) - blocks.min(axis=1, keepdims=True)) / steps[qtype]
    return (np.broadcast_to(bound, blocks.shape) * (1 + 1e-6) + 1e-12).reshape(ref.shape)


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's rotary layout for Llama's q/k rows: per head, the two halves interleaved."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _text_name(name: str) -> str:
    for prefix, to in TEXT_PREFIXES:
        if name.startswith(prefix):
            return to + name[len(prefix) :]
    return name


def _expected(name: str, ref: np.ndarray, arch: str, hparams: dict, undo_permute: bool) -> np.ndarray:
    if undo_permute and name.endswith(("q_proj.weight", "k_proj.weight")):
        n_head = hparams["num_attention_heads"]
        n_kv = hparams.get("num_key_value_heads") or n_head
        ref = _permute(ref, n_head if name.endswith("q_proj.weight") else n_kv)
    if arch.startswith("Gemma") and name.endswith("norm.weight"):
        ref = ref + 1
    return ref


def check_tensors(gguf_path: Path, merged: Path, quant: str, arch: str, model_cls) -> TensorCheck:
    """Every text tensor of ``merged`` against its dequantized copy in ``gguf_path``."""
    import gguf
    from safetensors import safe_open

    reader = gguf.GGUFReader(str(gguf_path))
    by_name = {t.name: t for t in reader.tensors}
    hparams = model_cls.load_hparams(merged, False)
    text = hparams.get("text_config") or hparams
    name_map = gguf.get_tensor_name_map(model_cls.model_arch, text["num_hidden_layers"])
    undo_permute = bool(getattr(model_cls, "undo_permute", False))
    result = TensorCheck(quant, gguf_path)
    for shard in sorted(merged.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            for hf_name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                _check_one(result, hf_name, f, by_name, name_map, arch, text, undo_permute)
    if result.tensors == 0:
        result.problems.append(f"no tensor of {merged} was found in {gguf_path.name}")
    return result


def _check_one(result: TensorCheck, hf_name: str, f, by_name, name_map, arch, text, undo_permute) -> None:
    from gguf.quants import dequantize

    if hf_name.startswith(VISION_PREFIXES):
        result.skipped_vision += 1
        return
    name = _text_name(hf_name)
    gg_name = name_map.get_name(name, try_suffixes=(".weight", ".bias"))
    tensor = by_name.get(gg_name) if gg_name else None
    if tensor is None:
        if name == "lm_head.weight" and text.get("tie_word_embeddings"):
            return
        result.problems.append(f"{hf_name}: not in the GGUF (looked for {gg_name})")
        return
    ref = _expected(name, f.get_tensor(hf_name).float().numpy(), arch, text, undo_permute)
    got = dequantize(tensor.data, tensor.tensor_type).reshape(ref.shape)
    qtype = tensor.tensor_type.name
    result.tensors += 1
    if allowed_error(ref[:1], qtype) is None:
        result.problems.append(f"{hf_name}: stored as {qtype}, a type this check has no bound for")
        return
    worst, ratio, over = _compare(ref, got, qtype)
    n, w, r = result.by_type.get(qtype, (0, 0.0, 0.0))
    result.by_type[qtype] = (n + 1, max(w, worst), max(r, ratio))
    if over is not None:
        i, err, bound = over
        result.problems.append(
            f"{hf_name} -> {gg_name} ({qtype}): |err| {err:.3e} at {i} over the allowed {bound:.3e} "
            f"(value {ref[i]:.4e})"
        )


CHUNK = 1 << 24  # values compared at a time, in float64: an 8B model's embedding is 0.6 G values


def _compare(ref: np.ndarray, got: np.ndarray, qtype: str):
    """(largest |err|, largest err/allowed, (index, err, allowed) of the first value over, or None),
    row blocks at a time so that memory stays a few hundred MB whatever the tensor."""
    rows = ref.reshape(ref.shape[0], -1) if ref.ndim > 1 else ref.reshape(1, -1)
    dq = got.reshape(rows.shape)
    step = max(1, CHUNK // rows.shape[1])
    worst = ratio = 0.0
    for start in range(0, rows.shape[0], step):
        r = rows[start : start + step].astype(np.float64)
        err = np.abs(dq[start : start + step].astype(np.float64) - r)
        bound = allowed_error(r, qtype)
        worst = max(worst, float(err.max()))
        ratio = max(
            ratio, float((err / np.maximum(bound, 1e-30)).max()) if bound.any() else float(err.any()) * np.inf
        )
        if (err > bound).any():
            k = np.unravel_index(int(np.argmax(err - bound)), err.shape)
            flat = (start + int(k[0])) * rows.shape[1] + int(k[1])
            index = tuple(int(x) for x in np.unravel_index(flat, ref.shape))
            return worst, ratio, (index, float(err[k]), float(bound[k]))
    return worst, ratio, None
