"""Liger's kernels for inference (engine/model/inference_kernels.py) only where they can run:
on CUDA with liger-kernel installed. Here (CPU) a loaded model keeps transformers' modules,
with the switch on or off."""

from __future__ import annotations

import pytest

from engine.model import inference_kernels
from engine.model.loading import load_for_inference


@pytest.mark.parametrize("switch", ["on", "off"])
def test_a_cpu_model_keeps_transformers_modules(tiny_model, monkeypatch, switch):
    monkeypatch.setenv(inference_kernels.ENV, switch)
    loaded = load_for_inference(str(tiny_model("qwen3")))
    norm = loaded.model.model.layers[0].input_layernorm
    assert type(norm).__module__.startswith("transformers.")
    assert "forward" not in norm.__dict__
    assert inference_kernels.apply_inference_kernels(loaded.model) is False
