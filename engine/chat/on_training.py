"""A chat with the model being trained, on the training thread at a step boundary, leaving
training exactly as it was: RNG states, train/eval modes, ``requires_grad`` flags and the
active adapter are put back, chat adapters are deleted afterwards, and a failure (out of
memory included) goes to the sink instead of taking the run down.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

from engine.chat.adapters import Adapters, is_peft
from engine.chat.chat import Answer, Done, Failed, Request, Sink, Started, generate
from engine.errors import UserError


def capture_rng() -> dict:
    import random

    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    import random

    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


@contextmanager
def training_untouched(model):
    """Everything a chat could disturb in a training model, put back exactly afterwards.

    RNG states (python, numpy, torch, cuda), every module's train/eval mode, every
    existing parameter's ``requires_grad``, and the active adapter. Inside: eval mode.
    """
    from engine.chat.routing import adapter_kept

    rng = capture_rng()
    modes = [(m, m.training) for m in model.modules()]
    try:
        with adapter_kept(model):
            model.eval()
            yield
    finally:
        for m, mode in modes:
            m.training = mode
        restore_rng(rng)


def explain_failure(e: BaseException, request_id: str = "") -> Failed:
    """A ``Failed`` event for an error raised while chatting; bugs keep their type and text."""
    import torch

    if isinstance(e, UserError):
        return Failed(request_id, e.message, e.fix, "input")
    if isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower():
        return Failed(
            request_id,
            "out of GPU memory while generating; the chat was dropped (a training run goes on)",
            "lower max tokens, chat with `live` (no extra adapter), or chat after training",
            "memory",
        )
    first = (str(e).splitlines() or [""])[0][:300]
    return Failed(request_id, f"chat failed: {type(e).__name__}: {first}", "see the message", "error")


def free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def chat_on_training_model(
    model, tokenizer, request: Request, sink: Sink, *, base_name: str, step: int | None = None
) -> Done | None:
    """Answer ``request`` with the model being trained, leaving training exactly as it was.

    Runs on the training thread at a step boundary. Chat adapters are loaded beside the
    training adapter (no second copy of the base), used through PEFT mixed-batch
    inference (the active adapter is never switched) and deleted afterwards.
    Never raises: failures go to the sink as ``Failed``.
    """
    t0 = time.perf_counter()
    live = getattr(model, "active_adapter", None) if is_peft(model) else None
    adapters = Adapters(model, base_name, live=live, keep=0)
    try:
        sink(Started(request.id, list(request.targets), step))
        if request.stop.is_set():
            done = Done(request.id, [Answer(t, "", "stopped", 0, None, None) for t in request.targets], step)
            sink(done)
            return done
        with training_untouched(model):
            try:
                names = adapters.names(request.targets)
                answers = generate(model, tokenizer, request, names, sink, adapters.notes)
            finally:
                from engine.chat.generate import release

                release(model)  # its KV cache and graphs: training wants the memory back
                adapters.trim(0)
        done = Done(request.id, answers, step, round(time.perf_counter() - t0, 3), adapters.notes)
        sink(done)
        return done
    except Exception as e:  # a chat never takes the training run down
        free_memory()
        sink(explain_failure(e, request.id))
        return None
