"""The memory the on-save probes need (``engine.model.memory.probe_bytes``) covers the KV cache
the generation engine really allocates for a batch of suite prompts, on a tiny Qwen3."""

from __future__ import annotations

import torch

from engine.chat.generate import decoder_for, release, render, run_rows
from engine.evaluate.evaluate import IDENTITY_PROMPTS
from engine.model.memory import probe_bytes


def _tensor_bytes(obj, depth: int = 3) -> int:
    """Bytes of the tensors an object holds (in its attributes, lists of them, ...)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if depth == 0:
        return 0
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(o, depth - 1) for o in obj)
    if hasattr(obj, "__dict__"):
        return sum(_tensor_bytes(o, depth - 1) for o in vars(obj).values())
    return 0


def test_probe_bytes_cover_the_engines_cache(tiny_model):
    from engine.model.loading import load_for_inference

    loaded = load_for_inference(str(tiny_model("qwen3")), device="cpu")
    model, tok = loaded.model, loaded.tokenizer
    rows = [render(tok, p) for p in IDENTITY_PROMPTS]
    new = 300  # past one cache bucket: the estimate must round up as the engine does
    run_rows(model, rows, max_new_tokens=new, stop_ids=set(), pad_id=tok.pad_token_id or 0)
    ((cache, _buffers),) = decoder_for(model)._caches.values()
    held = _tensor_bytes(cache)
    release(model)
    # The tiny model runs in float32 on CPU: 4 bytes an element where the GPU's bf16 has 2.
    estimate = probe_bytes(model.config, len(rows), new, dtype_bytes=4)
    assert 0 < held <= estimate
    text = model.config
    per_token = text.num_hidden_layers * 2 * text.num_key_value_heads * text.head_dim * 4
    assert held >= len(rows) * 512 * per_token  # prompt + 300 tokens: the 512 bucket (and a few indices)
