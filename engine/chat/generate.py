"""Answers to chat prompts through the one generation engine (``engine.chat.decode``).

- ``run_rows``: token rows in, token rows out, one adapter target per row; what the chat
  pane, ``chat --prompt``, the suites, the probes and lm-eval's generation tasks call.
  The engine (static KV cache, CUDA-graph decode steps) is kept per model; adapters are
  routed by ``engine.chat.routing`` (no PEFT mixed-batch path). A model or adapter the engine
  cannot take (an attention without custom masks, DoRA, ...) falls back to
  ``model.generate``, with a note saying so.
- ``generate``: the suites' batched greedy answers: prompts rendered with the chat
  template's ``add_generation_prompt``, batches of similar length, decoded without the
  prompt or special tokens.
"""

from __future__ import annotations

import contextlib
import re
import weakref
from collections.abc import Callable, Sequence

from engine.chat.decode import Decoder, Result

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


_DECODERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
ACTIVE = object()  # a row's target: whatever adapter the model has active


def decoder_for(model, mode: str = "auto") -> Decoder:
    """The model's engine (made on first use; its caches stay until ``release(model)``)."""
    d = _DECODERS.get(model)
    if d is None or (mode != "auto" and d.mode != mode):
        d = _DECODERS[model] = Decoder(model, mode)
    return d


def release(model) -> None:
    """Free the engine's KV caches and graphs of this model (training takes its memory back)."""
    d = _DECODERS.pop(model, None)
    if d is not None:
        d.release()


def base_note(model) -> str | None:
    """Which path the model's 4-bit base decodes on in its engine, and whether its steps ran
    eagerly for a failed graph capture (None: nothing to say, or no engine)."""
    d = _DECODERS.get(model)
    return d.path_note if d is not None else None


def _route_names(model, names):
    """PEFT adapter names per row (None: base), or None for a model without adapters."""
    if not (hasattr(model, "peft_config") and hasattr(model, "get_base_model")):
        return None
    active = getattr(model, "active_adapter", None)
    out = []
    for n in names:
        if n is ACTIVE:
            n = active
        out.append(None if n in (None, "__base__") else n)
    return out


def run_rows(
    model,
    rows: list[list[int]],
    *,
    max_new_tokens: int,
    stop_ids: set[int],
    pad_id: int,
    names: list | None = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    on_token: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    mode: str = "auto",
) -> Result:
    """Generate for each token row; ``names[i]`` is row i's adapter (``ACTIVE`` by default)."""
    from engine.chat.routing import Route

    names = names if names is not None else [ACTIVE] * len(rows)
    routed = _route_names(model, names)
    decoder = decoder_for(model, mode)
    route = Route(model, routed) if routed is not None else None
    why = decoder.usable or (route.reason if route is not None and not route.supported else None)
    if why is not None:
        return _hf_rows(
            model,
            rows,
            routed,
            why,
            max_new_tokens,
            stop_ids,
            pad_id,
            temperature,
            top_p,
            on_token,
            should_stop,
        )
    return decoder.run(
        rows,
        max_new_tokens=max_new_tokens,
        stop_ids=stop_ids,
        pad_id=pad_id,
        route=route,
        temperature=temperature,
        top_p=top_p,
        on_token=on_token,
        should_stop=should_stop,
    )


def hf_sampling(temperature: float = 0.0, top_p: float | None = None) -> dict:
    """``model.generate`` keywords for our settings: greedy at temperature 0, with the sampling
    defaults a model's generation_config may carry (top_k, ...) switched off."""
    if temperature > 0:
        return dict(do_sample=True, temperature=temperature, top_p=top_p)
    return dict(do_sample=False, temperature=None, top_p=None, top_k=None)


def _hf_rows(
    model, rows, routed, why, max_new_tokens, stop_ids, pad_id, temperature, top_p, on_token, should_stop
):
    """``model.generate`` (PEFT's mixed batch for several adapters), for what the engine cannot run.

    Tokens are taken as ``generate`` makes them (its stopping criteria see each new column),
    so they stream, and the times are those of the tokens: the first token's latency apart,
    the rate is the tokens after the first over the time after the first, as on the engine."""
    import time

    import torch
    from transformers import StoppingCriteriaList

    t0 = time.perf_counter()
    device = next(p for p in model.parameters() if p.device.type != "meta").device
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    taken = _Taken(len(rows), stop_ids, on_token, should_stop)
    kw = dict(max_new_tokens=max_new_tokens, eos_token_id=sorted(stop_ids), pad_token_id=pad_id)
    kw.update(hf_sampling(temperature, top_p))
    if routed is not None and len(set(routed)) > 1:
        kw["adapter_names"] = [n or "__base__" for n in routed]
    with torch.no_grad(), _one_target(model, routed):
        model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            stopping_criteria=StoppingCriteriaList([taken]),
            **kw,
        )
    first = taken.t_first - t0 if taken.t_first is not None else None
    return Result(
        taken.tokens,
        taken.hit,
        first,
        time.perf_counter() - t0,
        taken.t_last,
        taken.t_first,
        "hf-generate",
        [f"slow path: {why}"],
    )


@contextlib.contextmanager
def _one_target(model, routed):
    """Every row to one target: that adapter active (or the adapters off, for the base) while
    ``generate`` runs, and the active adapter and every ``requires_grad`` as they were after
    (PEFT's ``set_adapter`` marks the adapter it activates trainable). Without it the rows got
    the active adapter's answer under another adapter's name."""
    names = set(routed) if routed is not None else set()
    if len(names) != 1:
        yield
        return
    (name,) = names
    if name is None:
        with model.disable_adapter():
            yield
        return
    from engine.chat.routing import adapter_kept

    with adapter_kept(model):
        if name != getattr(model, "active_adapter", None):
            model.set_adapter(name)
        yield


class _Taken:
    """``model.generate``'s stopping criterion that takes each new token as it comes: the rows'
    answers, the time each row's last token came, ``on_token`` and a stop on request."""

    def __init__(self, rows: int, stop_ids, on_token, should_stop) -> None:
        import time

        self.clock = time.perf_counter
        self.stop_ids, self.on_token, self.should_stop = stop_ids, on_token, should_stop
        self.tokens: list[list[int]] = [[] for _ in range(rows)]
        self.hit = [False] * rows
        self.t_last: list[float | None] = [None] * rows
        self.t_first: float | None = None

    def __call__(self, input_ids, scores, **kw):
        import torch

        now = self.clock()
        self.t_first = self.t_first if self.t_first is not None else now
        for i, tok in enumerate(input_ids[:, -1].tolist()):
            if self.hit[i]:
                continue  # padding after the row's stop token
            if tok in self.stop_ids:
                self.hit[i] = True
            else:
                self.tokens[i].append(tok)
            self.t_last[i] = now
            if self.on_token:
                self.on_token(i, tok)
        flag = bool(self.should_stop and self.should_stop())
        return torch.full((input_ids.shape[0],), flag, dtype=torch.bool, device=input_ids.device)


def generate(
    model,
    tokenizer,
    prompts: Sequence[str | list[dict]],
    *,
    max_new_tokens: int = 256,
    batch_size: int = 8,
    system: str | None = None,
    on_batch: Callable[[list[int], list[str]], None] | None = None,
    target=ACTIVE,
    should_stop: Callable[[], bool] | None = None,
) -> list[str]:
    """Greedy answers, in the order of ``prompts``.

    ``should_stop()``: asked between tokens; once true, the batch in flight is dropped and no
    other starts (the answers not reached stay ``""``; ``on_batch`` saw the ones that are real).

    ``on_batch(indices, answers)`` is called after each batch (to save results as they come).
    ``target``: the PEFT adapter every prompt goes through (default: the model's active one;
    None: the base).
    """
    from engine.chat.stop_tokens import stop_token_ids

    encoded = [render(tokenizer, p, system) for p in prompts]
    # Similar lengths together: less padding, and greedy results do not depend on the order.
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    stops = stop_token_ids(tokenizer, model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stops)
    answers: list[str] = [""] * len(encoded)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        res = run_rows(
            model,
            [encoded[i] for i in idx],
            max_new_tokens=max_new_tokens,
            stop_ids=stops,
            pad_id=pad,
            names=[target] * len(idx),
            should_stop=should_stop,
        )
        if should_stop is not None and should_stop():
            break
        batch = [strip_thinking(tokenizer.decode(t, skip_special_tokens=True)) for t in res.tokens]
        for i, text in zip(idx, batch, strict=True):
            answers[i] = text
        if on_batch:
            on_batch(idx, batch)
    return answers
