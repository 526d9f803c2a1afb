"""Batched greedy answers to chat prompts, with the model's own chat template.

Small on purpose so the evaluation suites, benchmarks and later the chat pane can share it:
prompts are rendered with ``add_generation_prompt``, left-padded into batches of similar
length, generated greedily, and decoded without the prompt or special tokens.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

_THINK = re.compile(r"<think>.*?(</think>|$)", re.S)


def chat_messages(prompt: str | list[dict], system: str | None = None) -> list[dict]:
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system and messages[0].get("role") != "system":
        messages.insert(0, {"role": "system", "content": system})
    return messages


def render(tokenizer, prompt: str | list[dict], system: str | None = None) -> list[int]:
    """Token ids of the conversation plus the assistant header, as the chat template writes it."""
    ids = tokenizer.apply_chat_template(
        chat_messages(prompt, system), add_generation_prompt=True, tokenize=True, return_dict=False
    )
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return list(ids)


def strip_thinking(text: str) -> str:
    """The answer without a reasoning block (Qwen3's ``<think>...</think>``)."""
    return _THINK.sub("", text).strip()


def generate(
    model,
    tokenizer,
    prompts: Sequence[str | list[dict]],
    *,
    max_new_tokens: int = 256,
    batch_size: int = 8,
    system: str | None = None,
    on_batch: Callable[[list[int], list[str]], None] | None = None,
) -> list[str]:
    """Greedy answers, in the order of ``prompts``.

    ``on_batch(indices, answers)`` is called after each batch (to save results as they come).
    """
    import torch

    encoded = [render(tokenizer, p, system) for p in prompts]
    # Similar lengths together: less padding, and greedy results do not depend on the order.
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    answers: list[str] = [""] * len(encoded)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in idx)
        input_ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids = encoded[i]
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            mask[row, width - len(ids) :] = 1
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=pad,
            )
        batch = [
            strip_thinking(tokenizer.decode(out[row, width:], skip_special_tokens=True))
            for row in range(len(idx))
        ]
        for i, text in zip(idx, batch, strict=True):
            answers[i] = text
        if on_batch:
            on_batch(idx, batch)
    return answers
