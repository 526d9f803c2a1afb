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
- Q4_0 / Q5_0 (what llama.cpp's K-quants fall back to for rows not a multiple of 256): blocks of
  32, d = the signed extreme / -8 (-16) as f16, q = floor(x/d + 8.5) (16.5) clipped to 15 (31): the
  value opposite the extreme can clip by a full step, so |err| <= d (1 + 8 * 2^-11) (16 * 2^-11).
- Q4_1 / Q5_1: d = (max - min) / 15 (31), rounded to nearest: d (1/2 + 15 * 2^-11) + |min| 2^-11.
- K-quants (super-blocks of 256; llama.cpp's ``quantize_row_q4_K_ref`` and siblings): each
  sub-block's scale is searched over a fixed range, then itself stored as a 6-bit (Q4_K/Q5_K) or
  8-bit (Q6_K) multiple of a per-super-block f16 unit, and the values re-rounded to that stored
  grid and clipped to its ends. So an element is off by half a step, or, at a clipped end, by what
  the searched scale leaves uncovered plus the scale's own rounding times the largest level:
  - Q4_K (32 values, levels 0..15, min <= 0): scale searched in [R/16, R/14] with R = max -
    min(min, 0): |err| <= R/16 + 15/2 * u + m/2, u = (largest R of the super-block)/14/63, m = the
    largest |min| / 63.
  - Q5_K (levels 0..31, scale in [R/32, R/30.5]): R/32 + 31/2 * u + m/2, u = largest R/30.5/63.
  - Q6_K (16 values, levels -32..31 around zero, scale in [a/32.9, a/31.1] for a = max|x|): the
    side opposite the extreme clips by up to 1.9 a/32.9, and the 8-bit scale (unit = the largest
    scale/128) adds 32/2 units: 1.9 a/32.9 + 16 * (super-block a/31.1)/128.
  Each has 2^-10 of the super-block's max|x| added for the f16 units, and the bound is taken
  1.25 times: the search ends with a least-squares refit of the scale, which can leave the range
  above by a little. Measured with llama.cpp's quantizer (llama-cpp-python 0.3.36) on a tiny
  Llama's matrices (normal, and Student-t with 3 and 1.5 degrees of freedom), before that factor,
  the largest error was 86% (Q4_K), 88% (Q5_K) and 76% (Q6_K) of the bound; a value moved by a
  few steps fails (tests/test_gguf_runtime.py).
- A K-quant is made from an intermediate f16/bf16 GGUF (llama.cpp quantizes GGUF to GGUF), so its
  tensors are compared with the weights rounded to that type, and that rounding is added.

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
    size = 256 if qtype in K_BOUNDS else 32
    if qtype not in LEGACY_BOUNDS and qtype not in K_BOUNDS or ref.shape[-1] % size:
        return None
    if qtype in LEGACY_BOUNDS:
        blocks = ref.reshape(-1, 32)
        bound = LEGACY_BOUNDS[qtype](blocks)
    else:
        blocks = ref.reshape(-1, 256 // K_SUB[qtype], K_SUB[qtype])
        bound = K_SLACK * K_BOUNDS[qtype](blocks) + 2.0**-10 * np.abs(blocks).max(axis=(1, 2), keepdims=True)
    return (np.broadcast_to(bound, blocks.shape) * (1 + 1e-6) + 1e-12).reshape(ref.shape)


def _amax(b: np.ndarray) -> np.ndarray:
    return np.abs(b).max(axis=-1, keepdims=True)


def _range(b: np.ndarray) -> np.ndarray:
    return b.max(axis=-1, keepdims=True) - b.min(axis=-1, keepdims=True)


def _affine(levels: int):
    def bound(b):
        d = _range(b) / levels
        return d * (0.5 + levels * F16_REL) + np.abs(b.min(axis=-1, keepdims=True)) * F16_REL

    return bound


LEGACY_BOUNDS = {
    "Q8_0": lambda b: _amax(b) / 127 * (0.5 + 127 * F16_REL),
    "Q4_0": lambda b: _amax(b) / 8 * (1 + 8 * F16_REL),
    "Q5_0": lambda b: _amax(b) / 16 * (1 + 16 * F16_REL),
    "Q4_1": _affine(15),
    "Q5_1": _affine(31),
}


def _k_affine(levels: int, widest: float):
    """Q4_K / Q5_K on (super-blocks, sub-blocks, values): see the module docstring."""

    def bound(b):
        low = np.minimum(b.min(axis=-1, keepdims=True), 0)
        r = b.max(axis=-1, keepdims=True) - low
        unit = r.max(axis=1, keepdims=True) / widest / 63
        unit_min = np.abs(low).max(axis=1, keepdims=True) / 63
        return r / (levels + 1) + levels / 2 * unit + unit_min / 2

    return bound


def _q6_k(b):
    a = _amax(b)
    return 1.9 * a / 32.9 + 16 * a.max(axis=1, keepdims=True) / 31.1 / 128


K_SUB = {"Q4_K": 32, "Q5_K": 32, "Q6_K": 16}
K_BOUNDS = {"Q4_K": _k_affine(15, 14), "Q5_K": _k_affine(31, 30.5), "Q6_K": _q6_k}
K_SLACK = 1.25


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


def check_tensors(
    gguf_path: Path, merged: Path, quant: str, arch: str, model_cls, via: str | None = None
) -> TensorCheck:
    """Every text tensor of ``merged`` against its dequantized copy in ``gguf_path``; ``via``:
    the f16/bf16 GGUF it was quantized from, whose rounding comes first."""
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
                _check_one(result, hf_name, f, by_name, name_map, arch, text, undo_permute, via)
    if result.tensors == 0:
        result.problems.append(f"no tensor of {merged} was found in {gguf_path.name}")
    return result


def _check_one(
    result: TensorCheck, hf_name: str, f, by_name, name_map, arch, text, undo_permute, via
) -> None:
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
    worst, ratio, over = _compare(ref, got, qtype, via)
    n, w, r = result.by_type.get(qtype, (0, 0.0, 0.0))
    result.by_type[qtype] = (n + 1, max(w, worst), max(r, ratio))
    if over is not None:
        i, err, bound = over
        result.problems.append(
            f"{hf_name} -> {gg_name} ({qtype}): |err| {err:.3e} at {i} over the allowed {bound:.3e} "
            f"(value {ref[i]:.4e})"
        )


def file_weights(gguf_path: Path, merged: Path, model_cls):
    """(merged model's name, the GGUF's tensor dequantized in its layout), one tensor at a time (the
    converter's q/k row order and Gemma's ``1 + w`` undone): the file's weights, for torch."""
    import gguf
    from gguf.quants import dequantize
    from safetensors import safe_open

    reader = gguf.GGUFReader(str(gguf_path))
    by_name = {t.name: t for t in reader.tensors}
    hparams = model_cls.load_hparams(merged, False)
    text = hparams.get("text_config") or hparams
    name_map = gguf.get_tensor_name_map(model_cls.model_arch, text["num_hidden_layers"])
    arch = hparams.get("architectures", [""])[0]
    for shard in sorted(merged.glob("*.safetensors")):
        with safe_open(str(shard), framework="np") as f:
            for hf_name in f.keys():  # noqa: SIM118
                name = _text_name(hf_name)
                gg_name = name_map.get_name(name, try_suffixes=(".weight", ".bias"))
                tensor = by_name.get(gg_name) if gg_name else None
                if hf_name.startswith(VISION_PREFIXES) or tensor is None:
                    continue
                shape = f.get_slice(hf_name).get_shape()
                w = dequantize(tensor.data, tensor.tensor_type).reshape(shape).astype(np.float32)
                if getattr(model_cls, "undo_permute", False) and name.endswith(
                    ("q_proj.weight", "k_proj.weight")
                ):
                    heads = (
                        text["num_attention_heads"] if "q_proj" in name else text.get("num_key_value_heads")
                    )
                    w = _unpermute(w, heads or text["num_attention_heads"])
                if arch.startswith("Gemma") and name.endswith("norm.weight"):
                    w = w - 1
                yield hf_name, w


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


CHUNK = 1 << 24  # values compared at a time, in float64: an 8B model's embedding is 0.6 G values


def _round_to(x: np.ndarray, via: str | None) -> np.ndarray:
    if via == "f16":
        return x.astype(np.float16).astype(np.float64)
    if via == "bf16":
        import torch

        return torch.from_numpy(x).to(torch.bfloat16).double().numpy()
    return x


def _compare(ref: np.ndarray, got: np.ndarray, qtype: str, via: str | None = None):
    """(largest |err|, largest err/allowed, (index, err, allowed) of the first value over, or None),
    row blocks at a time so that memory stays a few hundred MB whatever the tensor."""
    rows = ref.reshape(ref.shape[0], -1) if ref.ndim > 1 else ref.reshape(1, -1)
    dq = got.reshape(rows.shape)
    step = max(1, CHUNK // rows.shape[1])
    worst = ratio = 0.0
    for start in range(0, rows.shape[0], step):
        r = rows[start : start + step].astype(np.float64)
        err = np.abs(dq[start : start + step].astype(np.float64) - r)
        src = _round_to(r, via)  # what llama.cpp's quantizer was given
        bound = allowed_error(src, qtype) + np.abs(src - r)
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
