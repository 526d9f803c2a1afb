"""Model FLOPs utilisation by the LoRA convention, for the run log and the benchmarks.

FLOPs per token = 4 x frozen matmul parameters (the input embedding excluded, the LM head
included) + 6 x LoRA parameters + 6 x layers x hidden x sequence_len (causal attention at
the packed length). The forward costs 2 FLOPs a parameter; the backward 2 for the input
gradient of frozen weights and 4 for trained ones. Recompute from gradient checkpointing is
not counted. The ceiling is a bf16 matmul measured on the device, not a datasheet number.
"""

from __future__ import annotations


def frozen_matmul_params(model_config) -> int:
    c = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    return layer_linear_params(c) + c.vocab_size * c.hidden_size


def layer_linear_params(text) -> int:
    """Weights of the decoder layers' linear layers (attention's four, the MLP's three)."""
    h, layers = text.hidden_size, text.num_hidden_layers
    inter = getattr(text, "intermediate_size", None) or 4 * h
    heads = getattr(text, "num_attention_heads", None) or 32
    kv = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or h // heads
    return layers * (h * head_dim * (2 * heads + 2 * kv) + 3 * h * inter)


def flops_per_token(model_config, lora_params: int, seq_len: int) -> float:
    c = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    return (
        4 * frozen_matmul_params(model_config)
        + 6 * lora_params
        + 6 * c.num_hidden_layers * c.hidden_size * seq_len
    )


def matmul_ceiling(n: int = 8192, reps: int = 10) -> float | None:
    """Measured bf16 matmul FLOP/s of the current CUDA device, or None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        a @ b
    end.record()
    torch.cuda.synchronize()
    flops = 2 * n**3 * reps / (start.elapsed_time(end) / 1e3)
    del a, b
    torch.cuda.empty_cache()
    return flops
