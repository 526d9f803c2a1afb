"""A memory estimate to choose gradient checkpointing automatically.

Without checkpointing, a decoder layer keeps roughly 34 x hidden bytes of bf16 activations
per token plus the MLP's intermediate (Korthikanti et al., "Reducing Activation
Recomputation"), and the LM head keeps the logits in fp32. With it, only each layer's input
survives. The estimate is deliberately pessimistic: an OOM costs more than a slower step.
"""

from __future__ import annotations


def estimate_bytes(model_config, tokens: int, quant_bits: int | None, checkpointing: bool) -> int:
    text = getattr(model_config, "text_config", model_config)
    h, layers = text.hidden_size, text.num_hidden_layers
    inter = getattr(text, "intermediate_size", 4 * h)
    vocab = text.vocab_size
    params = layers * (4 * h * h + 3 * h * inter) + 2 * vocab * h
    weights = params * (0.55 if quant_bits == 4 else 1 if quant_bits == 8 else 2)
    if checkpointing:
        acts = layers * tokens * h * 2 + tokens * (34 * h + 6 * inter)
    else:
        acts = layers * tokens * (34 * h + 6 * inter)
    logits = tokens * vocab * 4 * 2  # fp32 logits and their gradient, unless a fused loss avoids them
    return int(weights + acts + logits + 2 * 2**30)


def needs_checkpointing(config) -> bool:
    import torch

    from engine.model import load_model_config, resolve_base

    cfg = load_model_config(resolve_base(config.base_model), config.trust_remote_code)
    tokens = config.micro_batch_size * config.sequence_len
    free, _total = torch.cuda.mem_get_info()
    return estimate_bytes(cfg, tokens, config.quant_bits, checkpointing=False) > 0.9 * free
