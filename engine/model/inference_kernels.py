"""Liger's fused RMSNorm, SwiGLU/GeGLU and RoPE kernels on a model loaded for inference on CUDA.

A decode step at batch 1 is a few large GEMVs and hundreds of small kernels: transformers'
RMSNorm alone is seven (cast, square, mean, add, rsqrt, multiply, scale), and RoPE a dozen. In
a CUDA graph their launches cost nothing, but each still takes a few microseconds of GPU
time. Measured on an H200 (benchmarks/decode_profile.py, 8B-shaped Qwen3, batch 1): 2,716
kernels a token and 9.11 ms a graph step with transformers' modules, 1,170 and 6.53 ms with
Liger's (110 -> 153 tokens/s), against a 3.99 ms floor of weights over copy bandwidth. Training
already runs these kernels; a model loaded to chat, evaluate or run lm-eval now does too.

Liger patches the architecture's module functions for the whole process, as training does.
Without CUDA or without liger-kernel (the ``gpu`` extra) nothing changes;
``LEVIATHAN_INFERENCE_KERNELS=off`` keeps transformers' modules.
"""

from __future__ import annotations

import os

ENV = "LEVIATHAN_INFERENCE_KERNELS"
KERNELS = dict(rope=True, rms_norm=True, swiglu=True, geglu=True, layer_norm=True)
NO_LOSS = dict(cross_entropy=False, fused_linear_cross_entropy=False)  # inference computes no loss


def apply_inference_kernels(model) -> bool:
    """Patch ``model`` (a transformers model, or PEFT's around one); True when Liger's kernels are on."""
    if os.environ.get(ENV, "on") == "off":
        return False
    core = model.get_base_model() if hasattr(model, "peft_config") else model
    first = next((p for p in core.parameters() if p.device.type != "meta"), None)
    if first is None or first.device.type != "cuda":
        return False
    try:
        from liger_kernel.transformers.monkey_patch import (
            MODEL_TYPE_TO_APPLY_LIGER_FN,
            _apply_liger_kernel_to_instance,
        )
    except ImportError:
        return False
    if getattr(core.config, "model_type", None) not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        return False
    try:
        _apply_liger_kernel_to_instance(model=core, **KERNELS, **NO_LOSS)
    except Exception:  # a speed-up only: a model Liger cannot patch still answers with its own modules
        return False
    return True
