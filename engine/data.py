"""JSONL readers, row validation with file:line, and assistant-only token masks.

Three row shapes (Axolotl's ``type``): ``chat_template`` (OpenAI ``messages``),
``sharegpt`` (``conversations`` with from/value) and ``alpaca``
(instruction/input/output). Each becomes a list of ``{"role", "content"}`` turns.

The loss mask is built here, not by the chat template: most real templates (Llama 3's,
Qwen's) have no ``{% generation %}`` markers, so we render the conversation once, find
each assistant turn's text in it, and train on the tokens of that text plus the turn's
end marker (so the model learns to stop). Headers and user/system text carry no loss.
"""

from __future__ import annotations

import json
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path

from engine.errors import UserError

ROLES = {"system", "user", "assistant"}
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}
NO_CATEGORY = "(none)"


class BadRow(ValueError):
    """A row that cannot be trained on; the message says why."""


@dataclass
class Row:
    file: str
    line: int
    messages: list[dict]
    category: str


def _turns_chat(obj: dict, key: str) -> list[dict]:
    turns = obj.get(key)
    if not isinstance(turns, list) or not turns:
        raise BadRow(f"no `{key}` list")
    out = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict):
            raise BadRow(f"{key}[{i}] is not an object")
        role = t.get("role")
        if role is None:
            raise BadRow(f"{key}[{i}] has no role")
        if not isinstance(role, str) or role not in ROLES:
            raise BadRow(f"{key}[{i}] has unknown role {role!r} (allowed: system, user, assistant)")
        out.append({"role": role, "content": t.get("content")})
    return out


def _turns_sharegpt(obj: dict, key: str) -> list[dict]:
    turns = obj.get(key)
    if not isinstance(turns, list) or not turns:
        raise BadRow(f"no `{key}` list")
    out = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict):
            raise BadRow(f"{key}[{i}] is not an object")
        who = t.get("from")
        if who is None:
            raise BadRow(f"{key}[{i}] has no `from`")
        if not isinstance(who, str) or who not in SHAREGPT_ROLES:
            raise BadRow(f"{key}[{i}] has unknown role {who!r} (allowed: human, gpt, system)")
        out.append({"role": SHAREGPT_ROLES[who], "content": t.get("value")})
    return out


def _turns_alpaca(obj: dict) -> list[dict]:
    instruction, extra, output = obj.get("instruction"), obj.get("input") or "", obj.get("output")
    if not isinstance(instruction, str) or not instruction.strip():
        raise BadRow("empty or missing `instruction`")
    if not isinstance(extra, str):
        raise BadRow("`input` is not a string")
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]


def parse_row(obj, ds_type: str, field_messages: str | None = None) -> tuple[list[dict], str]:
    """Turns and category of one decoded JSON line; raises BadRow."""
    if not isinstance(obj, dict):
        raise BadRow("not a JSON object")
    if ds_type == "alpaca":
        turns = _turns_alpaca(obj)
    elif ds_type == "sharegpt":
        turns = _turns_sharegpt(obj, field_messages or "conversations")
    else:
        turns = _turns_chat(obj, field_messages or "messages")
    for i, t in enumerate(turns):
        if not isinstance(t["content"], str) or not t["content"].strip():
            raise BadRow(f"turn {i} ({t['role']}) has empty content")
    if not any(t["role"] == "assistant" for t in turns):
        raise BadRow("no assistant turn")
    category = obj.get("_category")
    return turns, str(category) if category is not None else NO_CATEGORY


def read_rows(
    path: str, ds_type: str, field_messages: str | None = None
) -> Iterator[Row | tuple[str, int, str]]:
    """Yield a Row for each good line and (file, line, reason) for each bad one, streaming."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{path}: dataset file not found", "fix `datasets[].path` in the config")
    with p.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            item = parse_line(path, lineno, raw, ds_type, field_messages)
            if item is not None:
                yield item


def parse_line(
    path: str, lineno: int, raw: bytes, ds_type: str, field_messages: str | None = None
) -> Row | tuple[str, int, str] | None:
    """One line of a JSONL file: a Row, (file, line, reason) when bad, None when blank."""
    if not raw.strip():
        return None
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: absurd nesting
        return (path, lineno, f"bad JSON ({str(e).split(':')[0]})")
    try:
        turns, category = parse_row(obj, ds_type, field_messages)
    except BadRow as e:
        return (path, lineno, str(e))
    return Row(path, lineno, turns, category)


def bad_rows_error(bad: list[tuple[str, int, str]], total: int) -> UserError:
    shown = "\n".join(f"  {f}:{n}: {why}" for f, n, why in bad[:20])
    more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
    return UserError(
        f"{len(bad)} bad row(s) out of {total}:\n{shown}{more}",
        "fix or remove these lines, or set `skip_bad_rows: true` to train without them",
    )


# ---- masks -------------------------------------------------------------------------------


class ChatEncoder:
    """Renders turns with the chat template and marks the assistant tokens."""

    def __init__(self, tokenizer) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise UserError("the tokenizer is not a fast tokenizer", "use a model with a tokenizer.json")
        if not tokenizer.chat_template:
            raise UserError(
                "the tokenizer has no chat template",
                "set `chat_template: chatml` (or llama3, or jinja with chat_template_jinja) in the config",
            )
        self.tok = tokenizer
        self.turn_end = self._probe_turn_end()

    def _probe_turn_end(self) -> str:
        probe = [{"role": "user", "content": "PROBEQ"}, {"role": "assistant", "content": "PROBEA"}]
        fix = "fix `chat_template_jinja`, or use `chat_template: chatml` / `llama3` / `tokenizer_default`"
        try:
            text = self.tok.apply_chat_template(probe, tokenize=False)
        except Exception as e:  # jinja2 syntax or runtime errors, raise_exception(...) in the template
            raise UserError(
                f"the chat template fails on a plain user/assistant chat: {_short(e)}", fix
            ) from None
        if not isinstance(text, str) or "PROBEA" not in text:
            raise UserError("the chat template does not write out the assistant's text", fix)
        return text[text.rindex("PROBEA") + len("PROBEA") :].strip()

    def _render(self, turns: list[dict]) -> str:
        try:
            return self.tok.apply_chat_template(turns, tokenize=False)
        except Exception as e:  # e.g. "System message must be at the beginning" from the template
            raise BadRow(f"the chat template refused it: {_short(e)}") from None

    def spans(self, text: str, turns: list[dict]) -> list[tuple[int, int]]:
        """Character spans of each assistant turn's text plus its end marker."""
        spans, cursor = [], 0
        for i, turn in enumerate(turns):
            content = turn["content"].strip()
            at = text.find(content, cursor)
            if at < 0:
                if turn["role"] == "assistant":
                    raise BadRow(f"assistant turn {i} is not found verbatim in the rendered chat template")
                continue
            end = at + len(content)
            if turn["role"] == "assistant":
                rest = text[end:]
                lead = len(rest) - len(rest.lstrip(" \n"))
                if self.turn_end and rest[lead:].startswith(self.turn_end):
                    end += lead + len(self.turn_end)
                spans.append((at, end))
            cursor = end
        return spans

    def encode(self, turns: list[dict], train_on_inputs: bool = False) -> tuple[list[int], list[int]]:
        text = self._render(turns)
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = enc["input_ids"]
        if train_on_inputs:
            return ids, list(ids)
        spans = self.spans(text, turns)
        labels, k = [], 0
        for tid, (start, _end) in zip(ids, enc["offset_mapping"], strict=True):
            while k < len(spans) and start >= spans[k][1]:
                k += 1
            inside = k < len(spans) and spans[k][0] <= start < spans[k][1]
            labels.append(tid if inside else -100)
        return ids, labels


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


# ---- stats -------------------------------------------------------------------------------


@dataclass
class Stats:
    rows_by_file: dict[str, int] = field(default_factory=dict)
    rows_by_category: dict[str, int] = field(default_factory=dict)
    tokens_by_category: dict[str, int] = field(default_factory=dict)
    trained_by_category: dict[str, int] = field(default_factory=dict)  # tokens with a label
    lengths: Counter = field(default_factory=Counter)  # tokens per row -> rows: bounded by the longest row
    bad: list[tuple[str, int, str]] = field(default_factory=list)
    too_long: list[tuple[str, int, int]] = field(default_factory=list)  # the first TOO_LONG_KEPT
    too_long_count: int = 0
    row_categories: list[str] | None = None  # per good row, kept by `check(collect=True)`
    row_lengths: object | None = None  # array("i") of token counts, same rows

    TOO_LONG_KEPT = 1000

    def add(self, row: Row, n_tokens: int | None, n_trained: int | None = None) -> None:
        self.add_counts(row.file, row.category, n_tokens, n_trained)

    def add_counts(
        self, file: str, category: str, n_tokens: int | None, n_trained: int | None = None
    ) -> None:
        self.rows_by_file[file] = self.rows_by_file.get(file, 0) + 1
        self.rows_by_category[category] = self.rows_by_category.get(category, 0) + 1
        if n_tokens is not None:
            self.lengths[n_tokens] += 1
            self.tokens_by_category[category] = self.tokens_by_category.get(category, 0) + n_tokens
        if n_trained is not None:
            self.trained_by_category[category] = self.trained_by_category.get(category, 0) + n_trained

    def add_too_long(self, file: str, line: int, n_tokens: int) -> None:
        self.too_long_count += 1
        if len(self.too_long) < self.TOO_LONG_KEPT:
            self.too_long.append((file, line, n_tokens))

    def merge(self, other: Stats) -> None:
        """Add another pass's counts (a worker's chunk); bad and too-long rows are the caller's."""
        for mine, theirs in (
            (self.rows_by_file, other.rows_by_file),
            (self.rows_by_category, other.rows_by_category),
            (self.tokens_by_category, other.tokens_by_category),
            (self.trained_by_category, other.trained_by_category),
        ):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v
        self.lengths.update(other.lengths)

    @property
    def total(self) -> int:
        return sum(self.rows_by_file.values()) + len(self.bad)

    def percentiles(self) -> dict[str, int]:
        if not self.lengths:
            return {}
        keys = sorted(self.lengths)
        cum = list(accumulate(self.lengths[k] for k in keys))
        n = cum[-1]
        # the value at sorted position int(q * n), as if every row's length were listed
        pick = lambda q: keys[bisect_right(cum, min(n - 1, int(q * n)))]  # noqa: E731
        return {"min": keys[0], "p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": keys[-1]}

    def report(self) -> str:
        out = ["rows per file:"]
        out += [f"  {n:>10,}  {f}" for f, n in self.rows_by_file.items()]
        out.append("rows per _category:")
        good = sum(self.rows_by_category.values()) or 1
        for cat, n in sorted(self.rows_by_category.items(), key=lambda kv: -kv[1]):
            toks = self.tokens_by_category.get(cat)
            extra = f"  {toks:>12,} tokens" if toks is not None else ""
            out.append(f"  {n:>10,}  {100 * n / good:5.1f}%  {cat}{extra}")
        if self.lengths:
            p = self.percentiles()
            out.append("tokens per row: " + "  ".join(f"{k} {v}" for k, v in p.items()))
        if self.too_long_count:
            out.append(f"rows longer than sequence_len: {self.too_long_count}")
        out.append(f"bad rows: {len(self.bad)}")
        return "\n".join(out)

    def token_report(self) -> str:
        """Tokens per category: all of them, the trained (assistant) ones, shares and means."""
        total = sum(self.tokens_by_category.values()) or 1
        trained_total = sum(self.trained_by_category.values()) or 1
        w = max([len(c) for c in self.rows_by_category] + [9])
        out = [
            "tokens per _category (the model's tokenizer, chat template applied):",
            f"  {'_category':<{w}}  {'rows':>10}  {'tokens':>14}  {'share':>6}  {'trained':>14}  {'share':>6}  {'mean/row':>8}",
        ]
        for cat, n in sorted(self.tokens_by_category.items(), key=lambda kv: -kv[1]):
            rows = self.rows_by_category.get(cat, 0)
            tr = self.trained_by_category.get(cat, 0)
            out.append(
                f"  {cat:<{w}}  {rows:>10,}  {n:>14,}  {100 * n / total:5.1f}%  {tr:>14,}  "
                f"{100 * tr / trained_total:5.1f}%  {n / max(rows, 1):>8,.0f}"
            )
        out.append(
            f"  {'total':<{w}}  {sum(self.rows_by_category.values()):>10,}  {sum(self.tokens_by_category.values()):>14,}"
            f"          {sum(self.trained_by_category.values()):>14,}"
        )
        return "\n".join(out)
