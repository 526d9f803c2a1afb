"""JSONL readers, row validation with file:line, and assistant-only token masks.

Three row shapes (Axolotl's ``type``): ``chat_template`` (OpenAI ``messages``),
``sharegpt`` (``conversations`` with from/value) and ``alpaca``
(instruction/input/output). Each becomes a list of ``{"role", "content"}`` turns.

The loss mask is built in engine/masks.py (``ChatEncoder``, from token positions).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import UserError
from engine.masks import BadRow, ChatEncoder  # noqa: F401  (re-exported: callers import them from here)

ROLES = {"system", "user", "assistant"}
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}
NO_CATEGORY = "(none)"


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
        out.append({**_extras(t, ("role", "content")), "role": role, "content": t.get("content")})
    return out


def _extras(t: dict, taken: tuple[str, ...]) -> dict:
    """The message's other keys (reasoning_content, training flags, ...): the encoder picks what
    the template and the mask read."""
    return {k: v for k, v in t.items() if k not in taken}


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
        out.append({**_extras(t, ("from", "value")), "role": SHAREGPT_ROLES[who], "content": t.get("value")})
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


# ---- stats -------------------------------------------------------------------------------


@dataclass
class Stats:
    rows_by_file: dict[str, int] = field(default_factory=dict)
    rows_by_category: dict[str, int] = field(default_factory=dict)
    tokens_by_category: dict[str, int] = field(default_factory=dict)
    trained_by_category: dict[str, int] = field(default_factory=dict)  # tokens with a label
    lengths: list[int] = field(default_factory=list)
    bad: list[tuple[str, int, str]] = field(default_factory=list)
    too_long: list[tuple[str, int, int]] = field(default_factory=list)
    row_categories: list[str] | None = None  # per good row, kept by `check(collect=True)`
    row_lengths: object | None = None  # array("i") of token counts, same rows
    notes: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    """What the chat template did to rows (dropped or merged a turn, ...): note -> rows."""
    notes_count: dict[str, int] = field(default_factory=dict)

    def add(self, row: Row, n_tokens: int | None, n_trained: int | None = None) -> None:
        self.add_counts(row.file, row.category, n_tokens, n_trained)

    def add_counts(
        self, file: str, category: str, n_tokens: int | None, n_trained: int | None = None
    ) -> None:
        self.rows_by_file[file] = self.rows_by_file.get(file, 0) + 1
        self.rows_by_category[category] = self.rows_by_category.get(category, 0) + 1
        if n_tokens is not None:
            self.lengths.append(n_tokens)
            self.tokens_by_category[category] = self.tokens_by_category.get(category, 0) + n_tokens
        if n_trained is not None:
            self.trained_by_category[category] = self.trained_by_category.get(category, 0) + n_trained

    def note(self, file: str, line: int, notes: list[str]) -> None:
        for n in dict.fromkeys(notes):
            self.notes_count[n] = self.notes_count.get(n, 0) + 1
            rows = self.notes.setdefault(n, [])
            if len(rows) < 20:  # a count for all, file:line for the first few
                rows.append((file, line))

    def notes_report(self) -> list[str]:
        """One line per kind of template note: how many rows, and the first ones as file:line."""
        out = []
        for n, count in sorted(self.notes_count.items(), key=lambda kv: -kv[1]):
            rows = self.notes[n]
            where = ", ".join(f"{f}:{line}" for f, line in rows[:3]) + (", ..." if count > 3 else "")
            out.append(f"{count:>10,} row(s): {n} ({where})")
        return out

    @property
    def total(self) -> int:
        return sum(self.rows_by_file.values()) + len(self.bad)

    def percentiles(self) -> dict[str, int]:
        if not self.lengths:
            return {}
        xs = sorted(self.lengths)
        pick = lambda q: xs[min(len(xs) - 1, int(q * len(xs)))]  # noqa: E731
        return {"min": xs[0], "p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": xs[-1]}

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
        if self.too_long:
            out.append(f"rows longer than sequence_len: {len(self.too_long)}")
        if self.notes_count:
            out.append("what the chat template did to rows (changes what is trained):")
            out += [f"  {line}" for line in self.notes_report()]
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
