"""Loss masks from token positions, exact on any Jinja chat template.

Searching the rendered text for each reply goes wrong on real templates (a reply ``"a"``
matches inside a header; a template that trims, merges or strips text moves it). Instead,
each message is located by what it changes: the conversation is rendered once as it is and
once with that one message's text replaced by a sentinel character that occurs nowhere
else. Everything between the first and the last character where the two renderings differ
belongs to that message (its text, plus any scaffolding the template writes only because of
it). Both renderings hold the whole conversation, so a template that renders earlier turns
differently once later ones exist (Qwen3 drops old ``<think>`` blocks) cannot misalign it.

Character spans become token labels through the fast tokenizer's offsets; a token is trained
when any of its characters (including the whitespace it absorbed, so `` Paris`` after
Mistral's ``[/INST]``) lies in a trained span. The end-of-turn marker is learned once per
template from a probe conversation, and each row must show it right after each trained reply
(or the row is refused with the reason). A template with ``{% generation %}`` markers
decides the assistant spans itself.

Rendering, locating and tokenizing happen once per row at preparation; nothing here runs
during training.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from itertools import chain

import numpy as np

from engine.data.mask_locate import REASONING_FIELDS, SENTINELS, LocateError, locate_all
from engine.errors import UserError

IGNORE = -100
EOS_POLICIES = ("turn", "last", "all", "none")
TRAIN_FLAGS = ("training", "train")  # per-message flags read when no `message_field_training` is set
TEMPLATE_KEYS = ("role", "content", "tool_calls", "tool_call_id", "name", *REASONING_FIELDS)
THINK_PAIRS = (
    ("<think>", "</think>"),
    ("<reasoning>", "</reasoning>"),
    ("<|begin_of_thought|>", "<|end_of_thought|>"),
)
_GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")


class BadRow(ValueError):
    """A row that cannot be trained on; the message says why."""


@dataclass(frozen=True)
class MaskOptions:
    """What carries loss in one dataset (Axolotl's names and defaults)."""

    roles_to_train: tuple[str, ...] = ("assistant",)
    train_on_eos: str = "turn"
    train_on_inputs: bool = False
    field_training: str | None = None
    """The message key of a per-message train flag (None: ``training`` or ``train``)."""

    @classmethod
    def of(cls, spec=None, config=None) -> MaskOptions:
        roles = getattr(spec, "roles_to_train", None)
        alias = {"human": "user", "gpt": "assistant"}  # sharegpt's names, as Axolotl maps them
        return cls(
            tuple(alias.get(r, r) for r in roles) if roles is not None else ("assistant",),
            getattr(spec, "train_on_eos", None) or "turn",
            bool(getattr(config, "train_on_inputs", False)),
            getattr(spec, "message_field_training", None),
        )


@dataclass
class Encoded:
    """One row's token ids and which of them carry loss; the lists are derived on demand (the
    preparation hot path reads the arrays)."""

    ids: np.ndarray  # int64
    mask: np.ndarray  # bool, True where the token carries loss
    notes: list[str] = field(default_factory=list)
    """What the template did to this row that changes what is trained (one line each)."""

    @classmethod
    def of_lists(cls, input_ids: list[int], labels: list[int], notes: list[str] | None = None) -> Encoded:
        return cls(np.asarray(input_ids, np.int64), np.asarray(labels, np.int64) != IGNORE, notes or [])

    @property
    def input_ids(self) -> list[int]:
        return self.ids.tolist()

    @property
    def labels(self) -> list[int]:
        return np.where(self.mask, self.ids, IGNORE).tolist()


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def split_reasoning(content: str) -> tuple[str, str, str, tuple[int, int]] | None:
    """(text before the reply, the reasoning, the reply, the reasoning's span in content) of
    inline ``<think>...</think>`` content."""
    for opener, closer in THINK_PAIRS:
        i, j = content.find(opener), content.find(closer)
        if 0 <= i < j:
            rest = content[j + len(closer) :]
            at = j + len(closer) + len(rest) - len(rest.lstrip())
            return content[:at], content[i + len(opener) : j], rest.strip(), (i + len(opener), j)
    return None


class ChatEncoder:
    """Renders turns with the chat template and marks the tokens that carry loss.

    Construct once per tokenizer (it probes the template); ``encode_row`` is then a pure
    function of the turns and options, safe to call from worker processes.
    """

    def __init__(self, tokenizer) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise UserError("the tokenizer is not a fast tokenizer", "use a model with a tokenizer.json")
        if not tokenizer.chat_template:
            raise UserError(
                "the tokenizer has no chat template",
                "set `chat_template: chatml` (or llama3, or jinja with chat_template_jinja) in the config",
            )
        self.tok = tokenizer
        self.template = tokenizer.get_chat_template()
        self.generation = bool(_GENERATION.search(self.template))
        self.kwargs = dict(tokenizer.special_tokens_map)
        self.specials = [t for t in tokenizer.added_tokens_encoder if t.strip()]
        self.marker, self.final_eos = self._probe()
        self.lead = self._probe_lead()
        self._skeletons: dict = {}  # the fast locate path's renderings, by conversation shape

    # ---- rendering -----------------------------------------------------------------

    def render(
        self, msgs: list[dict], add_generation_prompt: bool = False
    ) -> tuple[str, list[tuple[int, int]]]:
        """The conversation as text, and the template's ``{% generation %}`` spans."""
        from transformers.utils.chat_template_utils import render_jinja_template

        texts, spans = render_jinja_template(
            conversations=[msgs],
            chat_template=self.template,
            return_assistant_tokens_mask=self.generation,
            add_generation_prompt=add_generation_prompt,
            **self.kwargs,
        )
        return texts[0], (spans[0] if spans else [])

    def _probe(self) -> tuple[str, str]:
        """The end-of-turn marker after a reply, and what the template adds after the last one."""
        s = SENTINELS
        fix = "fix `chat_template_jinja`, or use `chat_template: chatml` / `llama3` / `tokenizer_default`"
        four = [{"role": r, "content": c} for r, c in zip(("user", "assistant") * 2, s[:4], strict=True)]
        try:
            text = self.render(four)[0]
        except Exception:  # some templates take one exchange only; two turns still give the marker
            return self._probe_one(fix)
        at = [text.find(c) for c in s[:4]]
        if min(at) < 0 or at != sorted(at):
            raise UserError("the chat template does not write out the assistant's text in order", fix)
        mid, last = text[at[1] + 1 : at[2]], text[at[3] + 1 :]
        marker = last[: self._common_tokens(mid, last)].rstrip()
        return marker, last[len(marker) :].strip()

    def _probe_lead(self) -> str:
        """Whitespace the model itself writes before a reply (Mistral's `[/INST]` + `" "`: the
        generation prompt stops before the space); it is trained with the reply."""
        s = SENTINELS
        user = [{"role": "user", "content": s[0]}]
        try:
            prompt = self.render(user, add_generation_prompt=True)[0]
            full = self.render(user + [{"role": "assistant", "content": s[1]}])[0]
        except Exception:
            return ""
        if not full.startswith(prompt) or s[1] not in full:
            return ""
        lead = full[len(prompt) : full.index(s[1])]
        return lead if lead and not lead.strip() else ""

    def _common_tokens(self, x: str, y: str) -> int:
        """Characters of the common start of x and y, cut back to a token boundary of both
        (Phi's `<|end|>\n<|user|>` and `<|end|>\n<|endoftext|>` share `<|end|>\n<|`)."""
        ex, ey = (self.tok.backend_tokenizer.encode(s, add_special_tokens=False) for s in (x, y))
        n = 0
        pairs = zip(zip(ex.ids, ex.offsets, strict=True), zip(ey.ids, ey.offsets, strict=True), strict=False)
        for (ix, ox), (iy, oy) in pairs:
            if ix != iy or ox != oy:
                break
            n = ox[1]
        return n

    def _probe_one(self, fix: str) -> tuple[str, str]:
        s = SENTINELS
        try:
            text = self.render([{"role": "user", "content": s[0]}, {"role": "assistant", "content": s[1]}])[0]
        except Exception as e:
            raise UserError(
                f"the chat template fails on a plain user/assistant chat: {_short(e)}", fix
            ) from None
        if s[1] not in text:
            raise UserError("the chat template does not write out the assistant's text", fix)
        return text[text.index(s[1]) + 1 :].rstrip(), ""

    def _template_messages(self, turns: list[dict]) -> list[dict]:
        # Only what chat templates read: a row's own bookkeeping keys never reach the template.
        return [{k: v for k, v in t.items() if k in TEMPLATE_KEYS} for t in turns]

    # ---- encoding ------------------------------------------------------------------

    def encode(self, turns: list[dict], options: MaskOptions | bool = False) -> tuple[list[int], list[int]]:
        """(input_ids, labels) of one conversation; ``options`` True is train_on_inputs."""
        if not isinstance(options, MaskOptions):
            options = MaskOptions(train_on_inputs=bool(options))
        enc = self.encode_row(turns, options)
        return enc.input_ids, enc.labels

    def encode_row(self, turns: list[dict], opts: MaskOptions = MaskOptions()) -> Encoded:
        msgs = self._template_messages(turns)
        try:
            text, gen = self.render(msgs)
        except Exception as e:  # e.g. "System role not supported" from the template itself
            raise BadRow(f"the chat template refused it: {_short(e)}") from None
        try:
            regions = locate_all(self.render, msgs, text, self._skeletons)
        except LocateError as e:
            raise BadRow(
                f"a turn cannot be located: the template fails once its text changes ({e})"
            ) from None
        notes = _layout_notes(msgs, regions, text, self.specials)
        text, regions, gen = self._reasoning(turns, msgs, regions, text, gen, notes)
        trained = [_wants(t, opts) for t in turns]
        spans = self._spans(msgs, regions, text, gen, trained, opts)
        enc = self.tok.backend_tokenizer.encode(text, add_special_tokens=False)
        ids = np.array(enc.ids, np.int64)
        trained = _trained(enc.offsets, spans)
        return Encoded(ids, trained, notes)

    def _reasoning(self, turns, msgs, regions, text, gen, notes):
        """Keep the final reply's reasoning in the text where the template leaves it out."""
        last = max((k for k, t in enumerate(turns) if t["role"] == "assistant"), default=None)
        for k, t in enumerate(turns):
            if t["role"] != "assistant" or regions[k] is None:
                continue
            field_r = next(
                (t[f] for f in REASONING_FIELDS if isinstance(t.get(f), str) and t[f].strip()), None
            )
            inline = split_reasoning(t["content"]) if isinstance(t["content"], str) else None
            reasoning = field_r if field_r is not None else (inline[1] if inline else None)
            a, b = regions[k]
            if reasoning is None:
                continue
            if self._renders_reasoning(msgs, k, inline, text):  # its opening tag belongs to the reply too
                regions[k] = (_opener_start(text, a), b)
                continue
            if k != last:
                notes.append(
                    f"the template leaves out the reasoning of an earlier {t['role']} turn (as at inference)"
                )
                continue
            reply = inline[2] if inline else t["content"].strip()
            body = text[a:b]
            at = a + len(body) - len(body.lstrip())
            if body.strip() != reply:
                raise BadRow(
                    f"turn {k} (assistant): the template rewrites the reply, so its reasoning cannot be placed"
                )
            head = inline[0] if inline else f"<think>\n{reasoning.strip()}\n</think>\n\n"
            cut = a if not text[a:at].strip() else at
            text = text[:cut] + head + text[at:]
            delta = len(head) - (at - cut)
            regions = [
                None if r is None else (_shift(r[0], at, delta), _shift(r[1], at, delta)) for r in regions
            ]
            regions[k] = (a, b + delta)
            gen = [(_shift(g0, at, delta), _shift(g1, at, delta)) for g0, g1 in gen]
            notes.append(
                "the template leaves out the final reply's reasoning: written before the reply as <think>"
            )
        return text, regions, gen

    def _renders_reasoning(self, msgs, k: int, inline, text: str) -> bool:
        """Whether the template writes message k's reasoning: swap it for a sentinel and look."""
        sentinel = next(c for c in SENTINELS if c not in text)
        m = dict(msgs[k])
        if inline is None:
            m.update({f: sentinel for f in REASONING_FIELDS if f in m})
        else:
            i, j = inline[3]
            m["content"] = m["content"][:i] + sentinel + m["content"][j:]
        try:
            return sentinel in self.render(msgs[:k] + [m] + msgs[k + 1 :])[0]
        except Exception as e:
            raise BadRow(
                f"turn {k} (assistant): the template fails once its reasoning changes ({_short(e)})"
            ) from None

    def _spans(self, msgs, regions, text, gen, trained, opts) -> list[tuple[int, int]]:
        """Character spans that carry loss: trained turns, and end tokens per train_on_eos."""
        located = [k for k, r in enumerate(regions) if r is not None]
        final = max(located, key=lambda k: regions[k][1], default=None)
        last_trained = max((k for k in located if trained[k]), default=None)
        spans = []
        for k in located:
            a, b = regions[k]
            if self.generation and msgs[k]["role"] == "assistant":  # the template's own start
                a = min([a] + [g[0] for g in gen if g[0] < b and g[1] > a])
            elif self.lead and msgs[k]["role"] == "assistant" and text.endswith(self.lead, 0, a):
                a -= len(self.lead)
            ends = self._end_spans(k, msgs[k]["role"], a, b, text, gen, trained[k], k == final)
            if trained[k]:
                spans.append((a, b))
            policy = opts.train_on_eos
            if (
                policy == "all"
                or (policy == "turn" and trained[k])
                or (policy == "last" and k == last_trained)
            ):
                spans += ends
        return spans

    def _end_spans(self, k, role, a, b, text, gen, trained, final) -> list[tuple[int, int]]:
        """The end-of-turn marker after message k, and the EOS after the conversation if k ends it."""
        out, after = [], b
        if self.generation and role == "assistant":
            covering = [g for g in gen if g[0] < b and g[1] > a]
            if not covering and trained:
                raise BadRow(f"turn {k} (assistant) lies outside the template's {{% generation %}} blocks")
            after = max([b] + [g[1] for g in covering])
            if after > b:
                out.append((b, after))
        elif self.marker and text.startswith(self.marker, b):
            after = b + len(self.marker)
            out.append((b, after))
        elif self.marker and trained and role == "assistant":
            raise BadRow(
                f"turn {k} (assistant): the template writes {text[b : b + 24]!r} after the reply, "
                f"not its end-of-turn marker {self.marker!r}"
            )
        rest = text[after:]
        if final and self.final_eos and rest.strip() == self.final_eos:
            at = after + rest.index(self.final_eos)
            out.append((at, at + len(self.final_eos)))
        return out


def _wants(turn: dict, opts: MaskOptions) -> bool:
    for flag in (opts.field_training,) if opts.field_training else TRAIN_FLAGS:
        value = turn.get(flag)
        if isinstance(value, bool) or value in (0, 1):  # Axolotl's sharegpt `weight` is 0/1
            return bool(value)
    return opts.train_on_inputs or turn["role"] in opts.roles_to_train


def _shift(x: int, at: int, delta: int) -> int:
    return x + delta if x >= at else x


def _opener_start(text: str, a: int) -> int:
    head = text[:a].rstrip()
    for opener, _ in THINK_PAIRS:
        if head.endswith(opener):
            return len(head) - len(opener)
    return a


def _trained(offsets, spans: list[tuple[int, int]]) -> np.ndarray:
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


def _layout_notes(msgs, regions, text: str, specials: list[str]) -> list[str]:
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
            elif split_reasoning(content) is None:
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
