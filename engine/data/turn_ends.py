"""Where a trained turn starts and where it ends, the same rule for every template.

Start: an assistant turn is what the model writes after the template's generation prompt, so
its trained text starts where ``render(turns before it, add_generation_prompt=True)`` stops
matching the conversation (harmony's ``<|channel|>final<|message|>``, Mistral's space after
``[/INST]``, a template's own ``<think></think>`` all belong to the turn), never before the end
of the previous turn's text.

End: the loss runs on over everything the template writes after the turn's text up to and
including the first token the model stops on: the tokenizer's EOS, the model's
``generation_config`` EOS ids, the config's ``eot_tokens``, and the end marker the template
writes after every reply. The search stops at the next turn's text, so a next header's
tokens are never trained unless one of them is itself a stop token (a template with no end
marker whose next role token ends generation). Where no stop token comes, the turn's text is
trained alone and the row carries a note: the model would never learn to stop there.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.data.mask_locate import lcp


@dataclass(frozen=True)
class TurnEnd:
    """A turn's end span (the text after it up to the stop token, inclusive) and which stop."""

    span: tuple[int, int] | None
    stop: str | None


def stop_set(tok, stop_tokens=(), eot_tokens=(), marker: str = "") -> tuple[str, ...]:
    """The stop strings, longest first (so ``<|end|>`` never hides ``<|endoftext|>``)."""
    found = [tok.eos_token, *stop_tokens, *eot_tokens]
    if marker and marker in set(tok.added_tokens_encoder):
        found.append(marker)
    return tuple(sorted({s for s in found if s}, key=len, reverse=True))


def model_stop_tokens(tok) -> tuple[str, ...]:
    """The tokens ``generation_config.json`` next to the tokenizer says generation stops on
    (read from local files only; none when there is no such file)."""
    path = getattr(tok, "name_or_path", None)
    if not path:
        return ()
    try:
        from transformers import GenerationConfig

        eos = GenerationConfig.from_pretrained(path, local_files_only=True).eos_token_id
    except Exception:  # no generation_config.json: the tokenizer's EOS and eot_tokens decide
        return ()
    ids = [eos] if isinstance(eos, int) else list(eos or [])
    return tuple(t for t in tok.convert_ids_to_tokens(ids) if t)


def find_end(text: str, b: int, window: int, stops: tuple[str, ...]) -> TurnEnd:
    """The first stop token in text[b:window], as the span from b through it."""
    best = None
    for s in stops:
        p = text.find(s, b, window)
        if p >= 0 and (best is None or p < best[0]):
            best = (p, s)
    if best is None:
        return TurnEnd(None, None)
    p, s = best
    return TurnEnd((b, p + len(s)), s)


def reply_start(render, msgs: list[dict], k: int, text: str, floor: int, a: int, b: int) -> int:
    """Where the model's own writing of assistant turn k begins (see the module docstring):
    text the generation prompt already holds (MiniMax's and QwQ's `<think>\n`) is not the
    model's to write, even where the row's own text repeats it."""
    try:
        prompt = render(msgs[:k], add_generation_prompt=True)[0]
    except Exception:  # a template that cannot render the prefix alone: the located text
        return a
    start = lcp(prompt, text)
    if start > floor or start == len(prompt):
        return min(start, b)
    # The prefix renders differently (Mistral moves the system text into the last user turn):
    # the prompt still ends with the scaffolding the model reads before it writes.
    for j in range(min(a, floor + len(prompt)), floor, -1):
        if prompt.endswith(text[floor:j]):
            return j
    return a


def no_stop_note(role: str, stops: tuple[str, ...]) -> str:
    shown = ", ".join(repr(s) for s in stops[:4])
    return (
        f"no stop token after a trained {role} turn (the template writes none of {shown} before the "
        "next turn): the turn is trained without an end, so the model does not learn to stop there; "
        "list the token it should stop on under `eot_tokens`"
    )
