"""The model shapes the benchmarks measure on: Qwen3-8B's, and a tiny one for CPU smoke runs."""

from __future__ import annotations

QWEN3_8B = dict(
    hidden_size=4096,
    intermediate_size=12288,
    num_hidden_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    vocab_size=151936,
    max_position_embeddings=40960,
)
TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    vocab_size=1024,
)


def qwen3_config(tiny: bool = False, **over):
    """A Qwen3Config of the 8B (or tiny) shape, untied, with ``over`` applied (e.g. vocab_size)."""
    from transformers import Qwen3Config

    return Qwen3Config(**{**(TINY if tiny else QWEN3_8B), "tie_word_embeddings": False, **over})
