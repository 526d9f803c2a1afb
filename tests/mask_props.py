"""What a loss mask must be, computed from the messages and the template's own rendering alone.

For each assistant turn: the model is handed the template's generation prompt (the conversation
before the turn, rendered with ``add_generation_prompt``) and writes everything after it. So the
trained characters of the turn start where that prompt stops matching the conversation's
rendering, run over the reply (and whatever the template writes with it: reasoning, tool calls)
and end with the first token the model stops on (the model's stop tokens and the config's
``eot_tokens``) met before the next message's text. No stop token there: the reply alone is
trained, and the encoder must say so in a note. Nothing else is trained. None of this calls the
encoder under test; only ``check`` does, to compare.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import re

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather of a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "The city"}},
                "required": ["city"],
            },
        },
    }
]
CALL_ID = "abcDEF123"  # Mistral's templates want nine alphanumerics


def tool_call(city: str) -> dict:
    return {
        "id": CALL_ID,
        "type": "function",
        "function": {"name": "get_weather", "arguments": {"city": city}},
    }


def reasoning_key(template: str) -> str | None:
    """The message key the template reads reasoning from (None: it reads none)."""
    for key in ("reasoning_content", "thinking", "reasoning"):
        if re.search(rf"""(\.|\[['"]){key}\b""", template):
            return key
    return None


def render(tok, msgs, tools=None, gen=False) -> str:
    kw = {"tools": tools} if tools is not None else {}
    return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen, **kw)


def _lcp(x: str, y: str) -> int:
    n = 0
    for a, b in zip(x, y, strict=False):
        if a != b:
            break
        n += 1
    return n


def _text_end(tok, msgs, k, tools, text) -> int:
    """Where message k's text ends: the last character that changes when its text does (0 when
    the template leaves it out)."""
    other = render(tok, [*msgs[:k], {**msgs[k], "content": "\ue000"}, *msgs[k + 1 :]], tools)
    if "\ue000" not in other:
        return 0
    same = 0
    while same < min(len(text), len(other)) and text[-1 - same] == other[-1 - same]:
        same += 1
    return len(text) - same


def expected(tok, msgs, tools, stops) -> tuple[str, list[tuple[int, int]], int]:
    """(rendered text, trained character spans, how many trained turns have no stop token)."""
    text = render(tok, msgs, tools)
    calls = {}  # where each turn's tool calls end: what changes when they are taken away
    for k, m in enumerate(msgs):
        if m.get("tool_calls"):
            bare = {key: v for key, v in m.items() if key != "tool_calls"}
            mine = render(tok, msgs[: k + 1], tools)
            try:
                other = render(tok, msgs[:k] + [bare], tools)
            except Exception:  # a template that wants content or calls: no telling where they end
                continue
            if other == mine:
                raise ValueError(f"turn {k}: the template does not write tool calls")
            same_end = 0
            while same_end < min(len(mine), len(other)) and mine[-1 - same_end] == other[-1 - same_end]:
                same_end += 1
            end = len(mine) - same_end
            if text.startswith(mine[:end]):
                # the bare turn may close differently: the calls end before the closing stop tokens
                while (head := mine[:end].rstrip()) and any(head.endswith(s) for s in stops):
                    end = len(head) - len(next(s for s in stops if head.endswith(s)))
                calls[k] = len(mine[:end].rstrip())
    spans, missing, floor = [], 0, 0
    for k, m in enumerate(msgs):
        if m["role"] != "assistant":
            floor = max(floor, _text_end(tok, msgs, k, tools, text))
            continue
        prompt = render(tok, msgs[:k], tools, gen=True)
        start = _lcp(prompt, text)
        if start < floor or (start == floor and start < len(prompt)):
            # the prefix renders differently (Mistral moves the system text): align the prompt's tail
            start = next((j for j in range(len(text), floor, -1) if prompt.endswith(text[floor:j])), floor)
        content = m.get("content") or ""
        reply = content.split("</think>")[-1].strip()
        after = start  # the reply comes after the reasoning, which may hold the same words
        marks = ["</think>"] if "</think>" in content else []
        for thought in [m.get(f) for f in ("reasoning_content", "thinking", "reasoning")] + marks:
            if isinstance(thought, str) and thought and (p := text.find(thought.strip(), start)) >= 0:
                after = max(after, p + len(thought.strip()))
        if reply:
            at = text.find(reply, after)
            if at < 0:
                raise LookupError(f"turn {k}: the template does not write the reply")
            end = at + len(reply)
        else:
            end = start
        end = max(end, calls.get(k, end))
        window = len(text)
        if k + 1 < len(msgs) and (msgs[k + 1].get("content") or "").strip():
            # the next message's text starts where changing it changes the rendering
            other = [*msgs[: k + 1], {**msgs[k + 1], "content": "\ue000"}, *msgs[k + 2 :]]
            with contextlib.suppress(Exception):
                window = max(end, _lcp(text, render(tok, other, tools)))
        hits = [(p, p + len(s)) for s in stops if (p := text.find(s, end, window)) >= 0]
        if hits:
            end = min(hits)[1]
        else:
            missing += 1
        floor = end
        spans.append((start, end))
        if k == len(msgs) - 1 and tok.eos_token and text[end:].strip() == tok.eos_token:
            at = end + text[end:].index(tok.eos_token)
            spans.append((at, at + len(tok.eos_token)))
    return text, spans, missing


def expected_mask(tok, text: str, spans) -> list[bool]:
    enc = tok.backend_tokenizer.encode(text, add_special_tokens=False)
    return [any(lo < b and hi > a for a, b in spans) for lo, hi in enc.offsets]


def make_encoder(tok, stop_tokens, eot_tokens=()):
    from engine.data.masks import ChatEncoder

    params = inspect.signature(ChatEncoder).parameters
    if "stop_tokens" in params:
        return ChatEncoder(tok, stop_tokens=tuple(stop_tokens), eot_tokens=tuple(eot_tokens))
    return ChatEncoder(tok)


def encode(encoder, msgs, tools):
    from engine.data.masks import MaskOptions

    if tools is not None and "tools" in inspect.signature(encoder.encode_row).parameters:
        return encoder.encode_row(msgs, MaskOptions(), tools=tools)
    return encoder.encode_row(msgs, MaskOptions())


def check(tok, encoder, msgs, tools, stops) -> str:
    """'ok', or what is wrong: 'refused: ...', 'wrong: ...', 'silent: ...' (no stop, no note)."""
    from engine.data.masks import BadRow

    try:
        render(tok, msgs, tools)
    except Exception as e:  # the template itself refuses the conversation
        try:
            encode(encoder, msgs, tools)
        except BadRow:
            return "ok"
        return f"wrong: the template raises ({type(e).__name__}) but the row was accepted"
    try:
        text, spans, missing = expected(tok, msgs, tools, stops)
    except LookupError as e:
        return f"n/a: {e}"
    except ValueError as e:  # tool calls the template leaves out: the row must be refused
        try:
            encode(encoder, msgs, tools)
        except BadRow:
            return "ok"
        return f"wrong: {e}, and the row was accepted"
    try:
        enc = encode(encoder, msgs, tools)
    except BadRow as e:
        return f"refused: {str(e)[:120]}"
    want = expected_mask(tok, text, spans)
    got = [bool(x) for x in enc.mask]
    if len(got) != len(want) or tok.decode(list(enc.ids)) != tok.decode(
        tok.backend_tokenizer.encode(text, add_special_tokens=False).ids
    ):
        if any("reasoning" in n and "written" in n for n in enc.notes):
            return "ok: the template drops the final reasoning; written in, with a note"
        return "wrong: the encoder trains on other text than the template renders"
    if got != want:
        ids = list(enc.ids)
        extra = tok.decode([i for i, g, w in zip(ids, got, want, strict=True) if g and not w])
        lost = tok.decode([i for i, g, w in zip(ids, got, want, strict=True) if w and not g])
        return f"wrong: trained extra {extra!r}, not trained {lost!r}"
    said = any("no stop token" in n for n in enc.notes)
    if missing and not said:
        return "silent: no stop token after a reply and no note"
    if said and not missing:
        return "wrong: a note says a reply has no stop token, but every reply has one"
    return "ok"


def spans_text(tok, enc) -> list[str]:
    """The trained token runs of an encoded row, as text (for reports)."""
    out, run = [], []
    for i, m in zip(list(enc.ids), list(enc.mask), strict=True):
        if m:
            run.append(i)
        elif run:
            out.append(tok.decode(run))
            run = []
    if run:
        out.append(tok.decode(run))
    return out


def dump(msgs) -> str:
    return json.dumps(msgs, ensure_ascii=False)
