"""Tool calls stay readable in a streamed answer.

Answers are decoded without special tokens, which also drops the markers many models write a
tool call with (``<tool_call>``, ``[TOOL_CALLS]``, ``<|python_tag|>``, harmony's ``<|call|>``,
Kimi's ``<|tool_call_begin|>``): the call's JSON would show with no sign it is a call. Those
markers are kept; every other special token is hidden as before.
"""

from __future__ import annotations

import re

TOOL_MARK = re.compile(r"tool|call|python_tag|function", re.IGNORECASE)


def hidden_ids(tokenizer) -> frozenset[int]:
    """Special token ids an answer does not show: all of them but tool-call markers."""
    special = set(tokenizer.all_special_ids)
    special |= {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    return frozenset(i for i in special if not TOOL_MARK.search(tokenizer.convert_ids_to_tokens(i) or ""))


def decode_visible(tokenizer, ids: list[int], hidden: frozenset[int]) -> str:
    return tokenizer.decode([i for i in ids if i not in hidden], skip_special_tokens=False)
