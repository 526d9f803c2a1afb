"""Row parsing with file:line, and assistant-only token masks.

Row shapes (Axolotl's ``type``): ``chat_template`` (OpenAI ``messages``, or any turn keys
through ``message_property_mappings`` and role names through ``roles``), ``sharegpt``
(``conversations`` with from/value), ``alpaca`` (instruction/input/output) and ``completion``
(``text``). Each becomes a list of ``{"role", "content"}`` turns; alpaca and completion rows
also keep their fields for Axolotl's own prompt formats (engine.data.prompt_formats). The files
themselves are read by engine.data.readers.

The loss mask is built in engine/data/masks.py (``ChatEncoder``, from token positions).
"""

from __future__ import annotations

import json
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import accumulate

from engine.config.dataset_kinds import canonical_type
from engine.data.masks import BadRow, ChatEncoder  # noqa: F401  (re-exported: callers import them from here)
from engine.errors import UserError

ROLES = {"system", "user", "assistant", "tool"}
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "tool": "tool",
}
NO_CATEGORY = "(none)"


@dataclass
class Row:
    file: str
    line: int
    messages: list[dict]
    category: str
    fmt: str = "chat"
    """chat (through the chat template), ``alpaca:STYLE`` or ``completion`` (engine.data.prompt_formats)."""
    fields: tuple = ()
    """alpaca: (instruction, input, output); completion: (text,)."""
    tools: list | None = None
    """The row's tool definitions (Axolotl's ``field_tools``), handed to the chat template."""


@dataclass
class Options:
    """The parsing side of a DatasetSpec (Axolotl's dataset keys), with their defaults."""

    type: str = "chat_template"
    field_messages: str | None = None
    message_property_mappings: dict | None = None
    message_field_role: str | None = None
    message_field_content: str | None = None
    roles: dict | None = None
    drop_system_message: bool = False
    field: str | None = None
    field_tools: str | None = None
    custom_format: object | None = None
    field_thinking: str | None = None
    template_thinking_key: str | None = None

    @classmethod
    def of(cls, spec_or_type, field_messages: str | None = None) -> Options:
        if isinstance(spec_or_type, Options):
            return spec_or_type
        if isinstance(spec_or_type, str):
            try:
                return cls(canonical_type(spec_or_type), field_messages)
            except ValueError:
                return cls(spec_or_type, field_messages)
        names = [f for f in cls.__dataclass_fields__ if hasattr(spec_or_type, f)]
        return cls(**{f: getattr(spec_or_type, f) for f in names})

    def turn_keys(self) -> tuple[str, str]:
        m = self.message_property_mappings or {}
        sharegpt = self.type == "sharegpt"
        role = m.get("role") or self.message_field_role or ("from" if sharegpt else "role")
        content = m.get("content") or self.message_field_content or ("value" if sharegpt else "content")
        return role, content

    def role_names(self) -> dict[str, str]:
        """The data's role names -> ours (Axolotl's defaults, plus ``roles``)."""
        names = {**SHAREGPT_ROLES}
        for ours, theirs in (self.roles or {}).items():
            for name in theirs if isinstance(theirs, list) else [theirs]:
                names[str(name)] = ours
        return names


def _content(value, where: str):
    """A turn's content: a string, or a list of text parts joined (Axolotl's multi-part content)."""
    if not isinstance(value, list):
        return value
    texts = []
    for j, part in enumerate(value):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and (part.get("train") is False or part.get("training") is False):
            raise BadRow(
                f"{where} part {j} has `train: false`: training only part of a message is not supported "
                "here; split it into separate messages and mark those with `training`"
            )
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind in ("image", "image_url", "video", "audio", "input_audio"):
            raise BadRow(f"{where} part {j} is {kind}: text-only training (no image, video or audio parts)")
        else:
            raise BadRow(f"{where} part {j} is not a {{'type': 'text', 'text': ...}} part")
    return "".join(texts)


def _turns(obj: dict, opt: Options) -> list[dict]:
    key = opt.field_messages or ("conversations" if opt.type == "sharegpt" else "messages")
    turns = obj.get(key)
    if not isinstance(turns, list) or not turns:
        raise BadRow(f"no `{key}` list")
    role_key, content_key = opt.turn_keys()
    names = opt.role_names()
    out = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict):
            raise BadRow(f"{key}[{i}] is not an object")
        role = t.get(role_key)
        if role is None:
            raise BadRow(f"{key}[{i}] has no {'role' if role_key == 'role' else f'`{role_key}`'}")
        if not isinstance(role, str) or names.get(role, role) not in ROLES:
            allowed = ", ".join(sorted(set(names) | ROLES))
            raise BadRow(
                f"{key}[{i}] has unknown role {role!r} (allowed: {allowed}; map others with `roles`)"
            )
        role = names.get(role, role)
        if role == "system" and opt.drop_system_message:
            continue
        content = _content(t.get(content_key), f"{key}[{i}]")
        if content is None and t.get("tool_calls"):  # a turn that only calls tools
            content = ""
        elif role == "tool" and isinstance(content, dict | list):  # a result given as JSON
            content = json.dumps(content, ensure_ascii=False)
        out.append({**_extras(t, (role_key, content_key), opt), "role": role, "content": content})
    return out


def _extras(t: dict, taken: tuple[str, ...], opt: Options) -> dict:
    """The message's other keys (reasoning_content, tool_calls, training flags, ...) under the
    names the template reads: ``message_property_mappings`` beyond role and content, and
    ``field_thinking`` -> ``template_thinking_key`` (Axolotl's, both ``reasoning_content`` by
    default). The encoder picks what the template and the mask read."""
    out = {k: v for k, v in t.items() if k not in taken}
    moves = {v: k for k, v in (opt.message_property_mappings or {}).items() if k not in ("role", "content")}
    if opt.field_thinking or opt.template_thinking_key:
        moves[opt.field_thinking or "reasoning_content"] = opt.template_thinking_key or "reasoning_content"
    for theirs, ours in moves.items():
        if theirs in out and theirs != ours:
            out[ours] = out.pop(theirs)
    return out


def _tools(obj: dict, opt: Options) -> list | None:
    """The row's tool definitions: a list, or a JSON string of one (as some data sets store it)."""
    key = opt.field_tools or "tools"
    tools = obj.get(key)
    if isinstance(tools, str) and tools.strip():
        try:
            tools = json.loads(tools)
        except ValueError:
            raise BadRow(f"`{key}` is a string but not JSON") from None
    if tools is None or tools == "":
        return None
    if not isinstance(tools, list) or not all(isinstance(x, dict) for x in tools):
        raise BadRow(f"`{key}` is not a list of tool definitions (objects)")
    return tools or None


def custom_fields(obj: dict, f) -> tuple[str, str]:
    """(prompt, output) of a row under Axolotl's user-defined prompt (``CustomFormat``), built as
    Axolotl's SystemDataPrompter.build_prompt_w_system does."""
    instruction, output = obj.get(f.field_instruction), obj.get(f.field_output)
    if not isinstance(instruction, str) or not instruction.strip():
        raise BadRow(f"empty or missing `{f.field_instruction}`")
    if not isinstance(output, str) or not output.strip():
        raise BadRow(f"empty or missing `{f.field_output}`")
    extra = obj.get(f.field_input) if f.field_input else None
    system = obj.get(f.field_system) if f.field_system and f.field_system in obj else f.system_prompt
    head = f.system_format.format(system=system) if system and f.system_format else ""
    if extra:
        return head + f.format.format(instruction=instruction, input=extra), output
    turn = f.no_input_format or f.format
    if "{input}" in turn:
        raise BadRow(f"no `{f.field_input}` and no `no_input_format` for rows without one")
    return head + turn.format(instruction=instruction), output


def _turns_alpaca(obj: dict) -> list[dict]:
    instruction, extra, output = obj.get("instruction"), obj.get("input") or "", obj.get("output")
    if not isinstance(instruction, str) or not instruction.strip():
        raise BadRow("empty or missing `instruction`")
    if not isinstance(extra, str):
        raise BadRow("`input` is not a string")
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]


def parse_row(obj, ds_type, field_messages: str | None = None) -> tuple[list[dict], str]:
    """Turns and category of one decoded row; raises BadRow. ``ds_type``: a type name, or the
    dataset's spec (its parsing options)."""
    opt = Options.of(ds_type, field_messages)
    if not isinstance(obj, dict):
        raise BadRow("not a JSON object")
    if opt.type == "completion":
        text = obj.get(opt.field or "text")
        if not isinstance(text, str) or not text.strip():
            raise BadRow(f"empty or missing `{opt.field or 'text'}`")
        turns = [{"role": "assistant", "content": text}]
    elif opt.type.startswith("alpaca"):
        turns = _turns_alpaca(obj)
    elif opt.type == "custom":
        prompt, output = custom_fields(obj, opt.custom_format)
        turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    else:
        turns = _turns(obj, opt)
    for i, t in enumerate(turns):
        if t["role"] == "assistant" and t.get("tool_calls") and isinstance(t["content"], str):
            continue  # only tool calls: its content may be empty (Axolotl trains these)
        if not isinstance(t["content"], str) or not t["content"].strip():
            raise BadRow(f"turn {i} ({t['role']}) has empty content")
    if not any(t["role"] == "assistant" for t in turns):
        raise BadRow("no assistant turn")
    category = obj.get("_category")
    return turns, str(category) if category is not None else NO_CATEGORY


def make_row(path: str, line: int, obj, opt: Options) -> Row:
    turns, category = parse_row(obj, opt)
    if opt.type.startswith("alpaca:"):
        fields = (obj["instruction"], obj.get("input") or "", obj["output"])
        return Row(path, line, turns, category, opt.type, fields)
    if opt.type == "completion":
        return Row(path, line, turns, category, "completion", (turns[0]["content"],))
    if opt.type == "custom":
        return Row(path, line, turns, category, "custom", (turns[0]["content"], turns[1]["content"]))
    return Row(path, line, turns, category, tools=_tools(obj, opt))


def read_rows(path, ds_type=None, field_messages: str | None = None) -> Iterator[Row | tuple[str, int, str]]:
    """Yield a Row for each good record and (file, line, reason) for each bad one, streaming.

    ``path``: a file path with ``ds_type`` (a type name or spec), or a DatasetSpec alone."""
    from engine.data import readers

    spec = path if not isinstance(path, str) else None
    opt = Options.of(spec if spec is not None else ds_type, field_messages)
    path = spec.path if spec is not None else path
    split, data_files = getattr(spec, "split", None), getattr(spec, "data_files", None)
    if readers.is_hub_id(path):
        snapshot = readers.hub_snapshot(path)
        if snapshot is None:  # not downloaded as files: maybe in the datasets library's own cache
            for n, obj in readers.hub_rows(path, getattr(spec, "name", None), split, data_files):
                yield _parsed(path, n, obj, opt)
            return
        files = readers.split_files(snapshot, readers.files_of(str(snapshot), data_files), split)
    else:
        files = readers.files_of(path, data_files)
    count = lambda: sum(readers.count(f) for f in files)  # noqa: E731
    keep = readers.split_range(split, count, path, hub=readers.is_hub_id(path))
    index = 0
    for f in files:
        for n, record in readers.records(f):
            index += 1
            if keep is not None and index - 1 not in keep:
                continue
            if isinstance(record, bytes):
                item = parse_line(str(f), n, record, opt)
            else:
                item = _parsed(str(f), n, record, opt)
            if item is not None:
                yield item


def _parsed(path: str, n: int, obj, opt: Options) -> Row | tuple[str, int, str]:
    try:
        return make_row(path, n, obj, opt)
    except BadRow as e:
        return (path, n, str(e))


def parse_line(
    path: str, lineno: int, raw: bytes, ds_type, field_messages: str | None = None
) -> Row | tuple[str, int, str] | None:
    """One line of a JSONL file: a Row, (file, line, reason) when bad, None when blank."""
    if not raw.strip():
        return None
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: absurd nesting
        return (path, lineno, f"bad JSON ({str(e).split(':')[0]})")
    return _parsed(path, lineno, obj, Options.of(ds_type, field_messages))


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
    lengths: Counter = field(default_factory=Counter)  # tokens per row -> rows: bounded by the longest row
    bad: list[tuple[str, int, str]] = field(default_factory=list)
    too_long: list[tuple[str, int, int]] = field(default_factory=list)  # the first TOO_LONG_KEPT
    too_long_count: int = 0
    row_categories: list[str] | None = None  # per good row, kept by `check(collect=True)`
    row_lengths: object | None = None  # array("i") of token counts, same rows
    notes: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    """What the chat template did to rows (dropped or merged a turn, ...): note -> rows."""
    notes_count: dict[str, int] = field(default_factory=dict)

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

    def add_too_long(self, file: str, line: int, n_tokens: int) -> None:
        self.too_long_count += 1
        if len(self.too_long) < self.TOO_LONG_KEPT:
            self.too_long.append((file, line, n_tokens))

    def merge(self, other: Stats) -> None:
        """Add another pass's counts and template notes (a worker's chunk); bad and too-long rows are the caller's."""
        for mine, theirs in (
            (self.rows_by_file, other.rows_by_file),
            (self.rows_by_category, other.rows_by_category),
            (self.tokens_by_category, other.tokens_by_category),
            (self.trained_by_category, other.trained_by_category),
        ):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v
        self.lengths.update(other.lengths)
        for n, count in other.notes_count.items():  # chunks merge in file order: so do the first rows
            self.notes_count[n] = self.notes_count.get(n, 0) + count
            rows = self.notes.setdefault(n, [])
            rows += other.notes.get(n, [])[: max(0, 20 - len(rows))]

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
        w = max([len(c) for c in self.rows_by_category] + [1])  # the token column lines up
        for cat, n in sorted(self.rows_by_category.items(), key=lambda kv: -kv[1]):
            toks = self.tokens_by_category.get(cat)
            name = f"{cat:<{w}}  {toks:>12,} tokens" if toks is not None else cat
            out.append(f"  {n:>10,}  {100 * n / good:5.1f}%  {name}")
        if self.lengths:
            p = self.percentiles()
            out.append("tokens per row: " + "  ".join(f"{k} {v}" for k, v in p.items()))
        if self.too_long_count:
            out.append(f"rows longer than sequence_len: {self.too_long_count}")
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
