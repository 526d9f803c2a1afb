"""The token ids that end a generated answer; shared by the chat and the generation engine."""

from __future__ import annotations


def stop_token_ids(tokenizer, model=None) -> set[int]:
    """EOS of the tokenizer and of the model's generation config, plus the usual turn ends."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    vocab = tokenizer.get_vocab()
    for t in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<|end_of_text|>"):
        if t in vocab:
            ids.add(vocab[t])
    return ids
