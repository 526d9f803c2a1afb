"""A memory estimate to choose gradient checkpointing automatically.

Without checkpointing, a decoder layer keeps roughly 34 x hidden bytes of bf16 activations
per token plus the MLP's intermediate (Korthikanti et al., "Reducing Activation
Recomputation"), and the LM head keeps the logits in fp32. With it, only each layer's input
survives. The estimate is deliberately pessimistic: an OOM costs more than a slower step.
"""

from __future__ import annotations

from engine.model.mfu import layer_linear_params


def layer_activation_bytes(h: int, inter: int, liger: bool) -> int:
    """Bytes kept per token per decoder layer for the backward pass (bf16).

    34h + 6i is the plain-PyTorch figure; Liger's fused RMSNorm and SwiGLU keep less. The
    Liger figure is fitted to a measured 8B run (micro batch 4 x 2048: ~64 GiB peak).
    """
    return 26 * h + 6 * inter if liger else 34 * h + 6 * inter


def estimate_bytes(
    model_config, tokens: int, quant_bits: int | None, checkpointing: bool, liger: bool
) -> int:
    text = getattr(model_config, "text_config", model_config)
    h, layers = text.hidden_size, text.num_hidden_layers
    inter = getattr(text, "intermediate_size", 4 * h)
    params = layer_linear_params(text) + 2 * text.vocab_size * h
    weights = params * (0.56 if quant_bits == 4 else 1.05 if quant_bits == 8 else 2)
    per_layer = layer_activation_bytes(h, inter, liger)
    # Checkpointing keeps each layer's input and recomputes one layer at a time.
    acts = (layers * 2 * h + per_layer) * tokens if checkpointing else layers * per_layer * tokens
    # TRL's fused LM head works on chunks: a few hundred MB at most, plus CUDA context and allocator slack.
    return int(weights + acts + 2 * 2**30)


COPY_MARGIN = 2**30  # beside a bf16 copy of a 4-bit base: the prefill's transients, allocator slack


def base_copy_bytes(model_config) -> int:
    """The decode engine's bf16 copy of a 4-bit base (``engine.chat.base_copy``): every
    quantized linear layer at 2 bytes a weight (lm_head and embeddings stay bf16, uncopied)."""
    return 2 * layer_linear_params(getattr(model_config, "text_config", model_config))


PROBE_PROMPT_TOKENS = 256  # room for a suite prompt with its chat template
DECODE_BUCKET = 256  # engine.chat.decode.BUCKET: cache lengths are rounded up to it


def probe_bytes(model_config, batch: int, max_new_tokens: int, dtype_bytes: int = 2) -> int:
    """What the on-save probes add while they run (``engine.chat.decode``): the static KV cache
    of one batch of ``batch`` rows, the prefill's largest layer transients and the logits.

    Counted on top of training's peak: the probes run between steps, but the allocator keeps
    training's blocks cached, and the cache is a new allocation of another shape."""
    text = getattr(model_config, "text_config", model_config)
    h = text.hidden_size
    inter = getattr(text, "intermediate_size", 4 * h)
    length = -(-(PROBE_PROMPT_TOKENS + max_new_tokens) // DECODE_BUCKET) * DECODE_BUCKET
    cache = kv_cache_bytes(text, batch, length, dtype_bytes)
    prefill = batch * PROBE_PROMPT_TOKENS * (4 * h + 3 * inter) * dtype_bytes
    logits = batch * text.vocab_size * 4 * 2  # float32 logits and their softmax
    return int(cache + prefill + logits)


def kv_cache_bytes(model_config, batch: int, length: int, dtype_bytes: int = 2) -> int:
    """The static KV cache of ``batch`` rows of ``length`` positions (keys and values, every layer)."""
    text = getattr(model_config, "text_config", model_config)
    heads = getattr(text, "num_attention_heads", 32)
    kv = getattr(text, "num_key_value_heads", heads)
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return batch * length * text.num_hidden_layers * 2 * kv * head_dim * dtype_bytes


def needs_checkpointing(config, liger: bool, loaded_bytes: int = 0) -> tuple[bool, int, int, int | None]:
    """(checkpointing on?, estimated bytes without it, bytes available on the GPU, the bf16
    copy of a 4-bit base counted for the probes: bytes, 0 when it does not fit, None when none).

    ``loaded_bytes``: what this process already holds that the estimate counts (the weights,
    when the model is loaded before the choice). On-save probes (``evaluation.on_save``) add
    their decode memory (``probe_bytes``) and, on a 4-bit base, the bf16 copy the engine decodes
    on (``base_copy_bytes``) where it fits beside the rest. Where it does not, it is not counted
    and never turns checkpointing on: the engine measures the free memory at the save and keeps
    the 4-bit path then (a copy lives only while a suite runs, so it never meets a step's activations).
    """
    import torch

    from engine.model.model import load_model_config, resolve_base

    cfg = load_model_config(resolve_base(config.base_model), config.trust_remote_code)
    tokens = config.micro_batch_size * config.sequence_len
    free = torch.cuda.mem_get_info()[0] + loaded_bytes
    need = estimate_bytes(cfg, tokens, config.quant_bits, checkpointing=False, liger=liger)
    need, copy = with_probes(cfg, config, need, free)
    return need > 0.92 * free, need, free, copy


def with_probes(model_config, config, need: int, free: int) -> tuple[int, int | None]:
    """(``need`` plus what the on-save probes add, the bf16 copy (of a 4-bit base, or of a bf16
    base to merge the adapter into) counted in it:
    bytes with its margin, 0 when it does not fit beside ``need`` in ``free``, None when none)."""
    ev = config.evaluation
    if ev is None or not ev.on_save:
        return need, None
    need += probe_bytes(model_config, ev.batch_size, ev.max_new_tokens)
    # A 4-bit base decodes on a bf16 copy; a bf16 LoRA base merges the probed adapter into one.
    if config.quant_bits != 4 and (config.quant_bits or config.adapter != "lora"):
        return need, None
    copy = base_copy_bytes(model_config) + COPY_MARGIN
    copy = copy if need + copy <= 0.92 * free else 0
    return need + copy, copy
