"""lm-evaluation-harness on our generation engine: the model class ``leviathan``.

It is lm-eval's own ``hf`` model (``HFLM``: the same tokenisation, batching, loglikelihood
forward passes and answer post-processing) given the model our loader loaded (so a LoRA
checkpoint, a merged model and a Qwen3-VL base all load the one way the rest of the project
loads them), with one change: generation tasks (``generate_until``) run through
``engine.chat.generate.run_rows`` (static KV cache, CUDA-graph decode steps, batched rows)
instead of ``model.generate``. Greedy answers are the same tokens ``hf`` produces; a row
stops at the model's EOS or once its text holds one of the task's ``until`` strings
(lm-eval cuts the text there either way).

Imports lm-eval: ``engine.evaluate.lmeval`` imports this module once it has checked that
lm-eval is installed.
"""

from __future__ import annotations

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

NAME = "leviathan"
_registered = None


class EngineLM(HFLM):
    """lm-eval's ``hf`` model, its generation through ``engine_generate``."""

    def _model_generate(self, context, max_length: int, stop: list[str], **kwargs) -> torch.Tensor:
        return engine_generate(self, context, max_length, stop, **kwargs)


def model_class():
    """The registered ``leviathan`` model class (registered on first use)."""
    global _registered
    if _registered is not None:
        return _registered
    try:
        _registered = register_model(NAME)(EngineLM)
    except (AssertionError, ValueError):  # registered already (a second import path)
        from lm_eval.api.registry import get_model

        _registered = get_model(NAME)
    return _registered


def _eos_ids(lm) -> set[int]:
    # What `model.generate` stops at when lm-eval gives no eos: the generation config's EOS.
    gen = getattr(lm.model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    return ids or {lm.tokenizer.eos_token_id}


def engine_generate(lm, context, max_length: int, stop: list[str], **kwargs) -> torch.Tensor:
    """``HFLM._model_generate``'s contract: [batch, context + new] token ids, right-padded."""
    from engine.chat.generate import run_rows

    mask = kwargs.pop("attention_mask", None)
    temperature = float(kwargs.get("temperature") or 0.0)
    sample = bool(kwargs.get("do_sample")) and temperature > 0
    top_p = float(kwargs.get("top_p") or 1.0)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    width = context.shape[1]
    rows = []
    for i in range(context.shape[0]):
        ids = context[i] if mask is None else context[i][mask[i].bool()]
        rows.append(ids.tolist())
    new = max(max_length - width, 1)
    got: list[list[int]] = [[] for _ in rows]
    done = [False] * len(rows)

    def on_token(row: int, token: int) -> None:
        got[row].append(token)
        if stop and not done[row]:
            tail = lm.tokenizer.decode(got[row][-16:], skip_special_tokens=False)
            done[row] = any(s in tail for s in stop)

    res = run_rows(
        lm.model,
        rows,
        max_new_tokens=new,
        stop_ids=_eos_ids(lm),
        pad_id=pad,
        temperature=temperature if sample else 0.0,
        top_p=top_p,
        on_token=on_token,
        should_stop=lambda: all(done) if stop else False,
    )
    out = torch.full((len(rows), width + new), pad, dtype=torch.long)
    out[:, :width] = context.cpu()
    for i, toks in enumerate(res.tokens):
        if toks:
            out[i, width : width + len(toks)] = torch.tensor(toks, dtype=torch.long)
    return out
