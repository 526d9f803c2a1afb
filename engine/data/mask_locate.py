"""Where each message sits in a rendered conversation, found by what it changes.

Exact method (``locate``): render the conversation again with one message's text replaced by
a sentinel character that occurs nowhere else; the characters between the first and the
last difference are that message's. One render per message, each of the whole conversation,
so templates that render earlier turns differently once later ones exist cannot misalign it.

Fast path (``locate_all``): one render with every message's text replaced by its own
sentinel gives the template's scaffolding between messages. When the real rendering is
exactly that scaffolding with each message's text (or the text trimmed) in the sentinels'
places, those places are the regions, and they are what the exact method would find; when it
is not (a template that branches on content, reasoning it splits off, a message it drops),
the exact method runs for every message.
"""

from __future__ import annotations

# Private-use characters: a sentinel must occur nowhere in the rendered conversation.
SENTINELS = "".join(chr(c) for c in range(0xF4E01, 0xF4E41))
REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class LocateError(ValueError):
    """The template failed when a message's text was replaced: the row cannot be masked."""


def lcp(x: str, y: str) -> int:
    lo, hi = 0, min(len(x), len(y))
    while lo < hi:  # binary search on slice equality: C-speed compares on long renderings
        mid = (lo + hi + 1) // 2
        if x[:mid] == y[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _lcs(x: str, y: str, limit: int) -> int:
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if x[len(x) - mid :] == y[len(y) - mid :]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def dummy(msg: dict, sentinel: str) -> dict:
    out = {k: v for k, v in msg.items() if k not in REASONING_FIELDS}
    out["content"] = sentinel
    return out


def _render(render, msgs: list[dict]) -> str:
    try:
        return render(msgs)[0]
    except Exception as e:
        raise LocateError(f"{type(e).__name__}: {str(e).strip()[:200]}") from None


def locate(render, msgs: list[dict], k: int, text: str) -> tuple[int, int] | None:
    """Characters of ``text`` that message k decides; None when the template leaves it out."""
    sentinel = next(c for c in SENTINELS if c not in text)
    other = _render(render, msgs[:k] + [dummy(msgs[k], sentinel)] + msgs[k + 1 :])
    if sentinel not in other:
        return None
    p = lcp(text, other)
    q = _lcs(text, other, min(len(text), len(other)) - p)
    return p, len(text) - q


def locate_all(
    render, msgs: list[dict], text: str, skeletons: dict | None = None
) -> list[tuple[int, int] | None]:
    """Every message's region in ``text`` (None for a message the template leaves out).

    ``skeletons``: a dict kept by the caller (one per template) for the fast path's renderings."""
    fast = _fast(render, msgs, text, skeletons)
    return fast if fast is not None else [locate(render, msgs, k, text) for k in range(len(msgs))]


SKELETONS_KEPT = 256


def _skeleton(render, msgs: list[dict], marks: list[str], skeletons: dict | None) -> str | None:
    """The conversation rendered with every text replaced by its sentinel; None if that fails.

    It depends only on what is not text (roles, names, flags), so rows of the same shape share
    it: ``skeletons`` keeps it by that shape. A template whose output changes by itself (a date)
    is still exact: the real rendering is checked against the skeleton, and the exact method
    runs where they disagree."""
    dummies = [dummy(m, c) for m, c in zip(msgs, marks, strict=True)]
    key = None
    if skeletons is not None:
        key = tuple(tuple(d.items()) for d in dummies)
        try:
            return skeletons[key]
        except TypeError:  # a value that cannot be a key (tool_calls): rendered every time
            key = None
        except KeyError:
            pass
    try:
        skeleton = render(dummies)[0]
    except Exception:
        return None
    if key is not None:
        if len(skeletons) >= SKELETONS_KEPT:
            skeletons.clear()
        skeletons[key] = skeleton
    return skeleton


def _fast(render, msgs: list[dict], text: str, skeletons: dict | None = None) -> list[tuple[int, int]] | None:
    marks = [c for c in SENTINELS if c not in text][: len(msgs)]
    if len(marks) < len(msgs) or any(any(m.get(f) for f in REASONING_FIELDS) for m in msgs):
        return None
    skeleton = _skeleton(render, msgs, marks, skeletons)
    if skeleton is None:
        return None
    at = [skeleton.find(c) for c in marks]
    if any(skeleton.count(c) > 1 for c in marks):
        return None
    # A message whose sentinel is missing is one the template leaves out (Mistral's system turn).
    order = sorted((k for k in range(len(msgs)) if at[k] >= 0), key=lambda k: at[k])
    cuts = [0] + [x for k in order for x in (at[k], at[k] + 1)] + [len(skeleton)]
    scaffold = [skeleton[cuts[2 * i] : cuts[2 * i + 1]] for i in range(len(order) + 1)]
    if not text.startswith(scaffold[0]):
        return None
    regions: list = [None] * len(msgs)
    pos = len(scaffold[0])
    for i, k in enumerate(order):
        content, after = msgs[k].get("content"), scaffold[i + 1]
        if not isinstance(content, str):
            return None
        for g in dict.fromkeys((content, content.strip(), content.rstrip(), content.lstrip())):
            if text.startswith(g + after, pos) and (i + 1 < len(order) or pos + len(g + after) == len(text)):
                regions[k] = (pos, pos + len(g))
                pos += len(g) + len(after)
                break
        else:
            return None
    return regions if pos == len(text) else None
