"""Character spans to token labels, and the notes on what a template did to a row's turns
(helpers of engine.data.masks)."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from itertools import chain

import numpy as np

from engine.data.mask_locate import REASONING_FIELDS

THINK_PAIRS = (
    ("<think>", "</think>"),
    ("<reasoning>", "</reasoning>"),
    ("<|begin_of_thought|>", "<|end_of_thought|>"),
)


def split_reasoning_of(content: str, pairs) -> bool:
    for opener, closer in pairs:
        i, j = content.find(opener), content.find(closer)
        if 0 <= i < j:
            return True
    return False


def trained_tokens(offsets, spans: list[tuple[int, int]]) -> np.ndarray:
    """Which tokens carry loss: any character a token covers (the gap before it included) lies in
    a span. Vectorised: per-token Python loops cost as much as the tokenizer on long rows."""
    n = len(offsets)
    if not n:
        return np.zeros(0, bool)
    flat = np.fromiter(chain.from_iterable(offsets), np.int64, 2 * n).reshape(n, 2)
    # A token owns the gap since the previous one: offsets trimmed of a leading space (GPT-2's
    # ByteLevel) still give ` Paris` its space.
    his = np.maximum.accumulate(np.maximum(flat[:, 1], 0))
    los = np.minimum(flat[:, 0], np.concatenate(([0], his[:-1])))
    his, los = his.tolist(), los.tolist()  # bisect on lists: the same search as ever, fast
    out = np.zeros(n, bool)
    for a, b in spans:
        out[bisect_right(his, a) : bisect_left(los, b)] = True  # tokens with hi > a and lo < b
    return out


def layout_notes(msgs, regions, text: str, specials: list[str]) -> list[str]:
    """What the template did to the conversation's turns (dropped, moved, merged, trimmed, rewritten)."""
    notes = []
    for k, (m, r) in enumerate(zip(msgs, regions, strict=True)):
        role = m["role"]
        if r is None:
            notes.append(f"the template leaves out the {role} turn")
            continue
        body, content = text[r[0] : r[1]], m.get("content")
        if isinstance(content, str) and body != content and not any(m.get(f) for f in REASONING_FIELDS):
            if body == content.strip():
                notes.append(f"the template trims whitespace around the {role} text")
            elif not split_reasoning_of(content, THINK_PAIRS):
                notes.append(f"the template rewrites the {role} text")
        if role != "system":
            continue
        later = [regions[j] for j in range(k + 1, len(msgs)) if regions[j] is not None]
        if any(o[0] < r[0] for o in later):
            notes.append("the template moves the system turn into a later turn")
            continue
        after = min((o[0] for o in later), default=None)
        if after is not None and not any(s in text[r[1] : after] for s in specials):
            notes.append("the template merges the system turn into the next turn")
    return notes
