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
Mistral's ``[/INST]``) lies in a trained span. Where an assistant turn starts and ends is one
rule for every template (engine.data.turn_ends): from the end of the generation prompt through
the first token the model stops on, with a note on the row where the template writes none. A
template with ``{% generation %}`` markers decides the assistant spans itself.

Rendering, locating and tokenizing happen once per row at preparation; nothing here runs
during training.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np

from engine.data.mask_locate import REASONING_FIELDS, SENTINELS, LocateError, dummy, lcp, locate_all
from engine.data.mask_spans import THINK_PAIRS, layout_notes, trained_tokens
from engine.data.turn_ends import find_end, model_stop_tokens, no_stop_note, reply_start, stop_set
from engine.errors import UserError

IGNORE = -100
EOS_POLICIES = ("turn", "last", "all", "none")
TRAIN_FLAGS = ("training", "train")  # per-message flags read when no `message_field_training` is set
TEMPLATE_KEYS = ("role", "content", "tool_calls", "tool_call_id", "name", *REASONING_FIELDS)
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
    train_on_eot: str | None = None
    """The same choice for turn ends that are ``eot_tokens`` (None: as train_on_eos)."""
    eot_tokens: tuple[str, ...] = ()
    """The config's ``eot_tokens``: turn ends the model stops on, besides its own stop tokens."""
    template_kwargs: tuple = ()
    """``chat_template_kwargs`` as sorted (key, value) pairs (hashable: the encoder caches by it)."""

    @classmethod
    def of(cls, spec=None, config=None) -> MaskOptions:
        roles = getattr(spec, "roles_to_train", None)
        alias = {"human": "user", "gpt": "assistant"}  # sharegpt's names, as Axolotl maps them
        return cls(
            tuple(alias.get(r, r) for r in roles) if roles is not None else ("assistant",),
            getattr(spec, "train_on_eos", None) or "turn",
            bool(getattr(config, "train_on_inputs", False)),
            getattr(spec, "message_field_training", None),
            getattr(spec, "train_on_eot", None),
            tuple(getattr(config, "eot_tokens", None) or ()),
            tuple(sorted((getattr(spec, "chat_template_kwargs", None) or {}).items())),
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

    def __init__(self, tokenizer, stop_tokens=(), eot_tokens=(), template_kwargs=None) -> None:
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
        self.kwargs = {**tokenizer.special_tokens_map, **(template_kwargs or {})}
        self.specials = [t for t in tokenizer.added_tokens_encoder if t.strip()]
        self.eot, self.stop_tokens = tuple(eot_tokens), tuple(stop_tokens)
        self._variants: dict = {}
        self.no_tools = None  # what a row without tools hands the template (see _probe)
        self.marker, self.final_eos = self._probe()
        self.stops = stop_set(
            tokenizer, self.stop_tokens + model_stop_tokens(tokenizer), eot_tokens, self.marker
        )
        self._skeletons: dict = {}  # the fast locate path's renderings, by conversation shape

    # ---- rendering -----------------------------------------------------------------

    def render(
        self, msgs: list[dict], add_generation_prompt: bool = False, tools: list | None = None
    ) -> tuple[str, list[tuple[int, int]]]:
        """The conversation as text, and the template's ``{% generation %}`` spans."""
        from transformers.utils.chat_template_utils import render_jinja_template

        texts, spans = render_jinja_template(
            conversations=[msgs],
            tools=self.no_tools if tools is None else tools,
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
            try:
                return self._probe_one(fix)
            except UserError as err:  # a tool-use variant (Hermes, Command R) iterates `tools` unguarded
                self.no_tools = []
                try:
                    text = self.render(four)[0]
                except Exception:
                    self.no_tools = None
                    raise err from None
        at = [text.find(c) for c in s[:4]]
        if min(at) < 0 or at != sorted(at):
            raise UserError("the chat template does not write out the assistant's text in order", fix)
        mid, last = text[at[1] + 1 : at[2]], text[at[3] + 1 :]
        marker = last[: self._common_tokens(mid, last)].rstrip()
        return marker, last[len(marker) :].strip()

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
        # Only what chat templates read, and no null values (Axolotl drops them too: a template
        # testing `message.tool_calls is defined` would fail on `tool_calls: null`).
        return [{k: v for k, v in t.items() if k in TEMPLATE_KEYS and v is not None} for t in turns]

    # ---- encoding ------------------------------------------------------------------

    def encode(self, turns: list[dict], options: MaskOptions | bool = False) -> tuple[list[int], list[int]]:
        """(input_ids, labels) of one conversation; ``options`` True is train_on_inputs."""
        if not isinstance(options, MaskOptions):
            options = MaskOptions(train_on_inputs=bool(options))
        enc = self.encode_row(turns, options)
        return enc.input_ids, enc.labels

    def encode_row(
        self, turns: list[dict], opts: MaskOptions = MaskOptions(), tools: list | None = None
    ) -> Encoded:
        """One row's ids and loss mask; ``tools``: the row's tool definitions, handed to the template."""
        msgs = self._template_messages(turns)
        if opts.eot_tokens or opts.template_kwargs:
            return self._variant(opts).encode_row(
                turns, replace(opts, eot_tokens=(), template_kwargs=()), tools
            )
        render = partial(self.render, tools=tools) if tools else self.render
        try:
            text, gen = render(msgs)
        except Exception as e:  # e.g. "System role not supported" from the template itself
            raise BadRow(f"the chat template refused it: {_short(e)}") from None
        try:  # rows with tools render their own skeletons: the tools are part of the shape
            regions = locate_all(render, msgs, text, None if tools else self._skeletons)
        except LocateError as e:
            raise BadRow(
                f"a turn cannot be located: the template fails once its text changes ({e})"
            ) from None
        calls = self._tool_calls(msgs, text, render)
        notes = layout_notes(msgs, regions, text, self.specials)
        text, regions, gen = self._reasoning(turns, msgs, regions, text, gen, notes, render)
        trained = [_wants(t, opts) for t in turns]
        spans = self._spans(msgs, regions, text, gen, trained, opts, notes, render, calls)
        enc = self.tok.backend_tokenizer.encode(text, add_special_tokens=False)
        ids = np.array(enc.ids, np.int64)
        trained = trained_tokens(enc.offsets, spans)
        return Encoded(ids, trained, notes)

    def _variant(self, opts: MaskOptions) -> ChatEncoder:
        """This encoder with a dataset's eot_tokens and template variables (made once each)."""
        key = (opts.eot_tokens, opts.template_kwargs)
        if key not in self._variants:
            kwargs = {k: v for k, v in self.kwargs.items() if k not in self.tok.special_tokens_map}
            self._variants[key] = ChatEncoder(
                self.tok,
                self.stop_tokens,
                self.eot + opts.eot_tokens,
                {**kwargs, **dict(opts.template_kwargs)},
            )
        return self._variants[key]

    def _tool_calls(self, msgs, text: str, render) -> dict[int, int]:
        """Where each assistant turn's tool calls end in ``text`` (found by rendering the turn
        without them). A template that ignores tool calls would train an empty reply: the model
        would learn to answer nothing where it should call a tool, so the row is refused."""
        out = {}
        for k, m in enumerate(msgs):
            if m["role"] == "assistant" and m.get("tool_calls"):
                bare = {key: v for key, v in m.items() if key != "tool_calls"}
                try:  # the conversation up to the turn: a tool result after it needs its call
                    mine, other = (render(msgs[:k] + [x])[0] for x in (m, bare))
                except Exception:
                    mine = other = None
                if mine is not None and mine != other:
                    # the common end of the whole renderings: cut after the common start, a
                    # shared `<` of `<tool_call>` and `<|im_end|>` would split the end marker
                    end = max(lcp(mine, other), len(mine) - lcp(mine[::-1], other[::-1]))
                    if text.startswith(mine[:end]):
                        out[k] = _before_stops(mine, end, self.stops)
                if mine is not None and mine == other:
                    raise BadRow(
                        f"turn {k} (assistant): the chat template does not write tool calls, so the "
                        "turn would train an empty reply; use a template with tool use"
                    )
        return out

    def _reasoning(self, turns, msgs, regions, text, gen, notes, render):
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
            if self._renders_reasoning(msgs, k, inline, text, render):
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
            block = _own_block(text, cut)
            if block == "closed":
                notes.append(
                    "the template closes the reasoning itself before the final reply (its own `</think>`): "
                    "the row's reasoning is left out (the template may take a thinking switch under "
                    "`chat_template_kwargs`)"
                )
                continue
            if block is not None:  # the template's own empty <think></think>: the reasoning goes inside
                cut, at = block
                head = f"\n{reasoning.strip()}\n"
            text = text[:cut] + head + text[at:]
            delta = len(head) - (at - cut)
            regions = [
                None if r is None else (_shift(r[0], at, delta), _shift(r[1], at, delta)) for r in regions
            ]
            regions[k] = (min(a, cut), b + delta)
            gen = [(_shift(g0, at, delta), _shift(g1, at, delta)) for g0, g1 in gen]
            notes.append(
                "the template leaves out the final reply's reasoning: written before the reply as <think>"
            )
        return text, regions, gen

    def _renders_reasoning(self, msgs, k: int, inline, text: str, render) -> bool:
        """Whether the template writes message k's reasoning: swap it for a sentinel and look."""
        sentinel = next(c for c in SENTINELS if c not in text)
        m = dict(msgs[k])
        if inline is None:
            m.update({f: sentinel for f in REASONING_FIELDS if f in m})
        else:
            i, j = inline[3]
            m["content"] = m["content"][:i] + sentinel + m["content"][j:]
        try:
            return sentinel in render(msgs[:k] + [m] + msgs[k + 1 :])[0]
        except Exception as e:
            raise BadRow(
                f"turn {k} (assistant): the template fails once its reasoning changes ({_short(e)})"
            ) from None

    def _spans(self, msgs, regions, text, gen, trained, opts, notes, render, calls) -> list[tuple[int, int]]:
        """Character spans that carry loss: trained turns, and their ends per train_on_eos/eot."""
        located = [k for k, r in enumerate(regions) if r is not None or msgs[k].get("tool_calls")]
        bounds = self._bounds(msgs, regions, text, gen, render, trained, calls)
        final = max(located, key=lambda k: bounds[k][1], default=None)
        last_trained = max((k for k in located if trained[k]), default=None)
        spans, silent = [], set()
        for i, k in enumerate(located):
            a, b = bounds[k]
            window = bounds[located[i + 1]][0] if i + 1 < len(located) else len(text)
            window = max(window, b)
            ends, stop = self._end_spans(k, msgs[k]["role"], a, b, text, gen, window, k == final)
            if trained[k]:
                spans.append((a, b))
                if stop is None and not (self.generation and msgs[k]["role"] == "assistant"):
                    silent.add(msgs[k]["role"])
            policy = opts.train_on_eot if (stop in self.eot and opts.train_on_eot) else opts.train_on_eos
            if (
                policy == "all"
                or (policy == "turn" and trained[k])
                or (policy == "last" and k == last_trained)
            ):
                spans += ends
        notes += [no_stop_note(role, self.stops) for role in sorted(silent)]
        return spans

    def _bounds(self, msgs, regions, text, gen, render, trained, calls) -> list:
        """Each turn's (start, end) of text; an assistant turn starts after the generation prompt."""
        out, floor = [], 0
        for k, r in enumerate(regions):
            if r is None and not msgs[k].get("tool_calls"):
                out.append(None)
                continue
            a, b = r if r is not None else (floor, floor)
            if msgs[k]["role"] == "assistant":
                if self.generation:  # the template's own start
                    a = min([a] + [g[0] for g in gen if g[0] < b and g[1] > a])
                b = max(b, calls.get(k, b))
                if r is None:  # only tool calls, which the template writes whatever the content
                    later = [x[0] for x in regions[k + 1 :] if x is not None] + [len(text)]
                    a = reply_start(render, msgs, k, text, floor, later[0], later[0])
                    b = max(a, calls.get(k, a))
                elif trained[k]:
                    fast = self._known_start(msgs, k, text, floor, a, not isinstance(render, partial))
                    a = fast if fast is not None else reply_start(render, msgs, k, text, floor, a, b)
            out.append((a, max(a, b)))
            floor = max(floor, b)
        return out

    def _known_start(self, msgs, k: int, text: str, floor: int, a: int, plain: bool) -> int | None:
        """``reply_start`` from the rendering of the conversation's shape (texts swapped for
        sentinels), kept per shape: the scaffold from the previous text to where the model
        starts writing is the same for every row of that shape. None: work it out the slow way."""
        if not plain or k == 0 or any(m.get("tool_calls") for m in msgs[: k + 1]):
            return None
        marks = SENTINELS[: k + 1]
        dummies = [{**dummy(m, c)} for m, c in zip(msgs[: k + 1], marks, strict=True)]
        key = ("start", tuple(tuple(d.items()) for d in dummies))
        if key not in self._skeletons:
            try:
                prompt = self.render(dummies[:k], add_generation_prompt=True)[0]
                conv = self.render(dummies)[0]
            except Exception:
                self._skeletons[key] = None
                return None
            prev = conv.find(marks[k - 1]) + 1
            start = lcp(prompt, conv)
            ok = prev > 0 and prev < start <= conv.find(marks[k]) and start == len(prompt)
            self._skeletons[key] = conv[prev:start] if ok else None
        scaffold = self._skeletons[key]
        if scaffold is None or not text.startswith(scaffold, floor) or floor + len(scaffold) > a:
            return None
        return floor + len(scaffold)

    def _end_spans(self, k, role, a, b, text, gen, window, final) -> tuple[list, str | None]:
        """The text after turn k through the first stop token, and the EOS after the conversation
        if k ends it; with the stop token found (None: none)."""
        out, after, stop = [], b, None
        if self.generation and role == "assistant":
            covering = [g for g in gen if g[0] < b and g[1] > a]
            after = max([b] + [g[1] for g in covering])
            if after > b:
                out.append((b, after))
        else:
            end = find_end(text, b, window, self.stops)
            if end.span is not None:
                out.append(end.span)
                after, stop = end.span[1], end.stop
        rest = text[after:].strip()
        eos = next((e for e in (self.final_eos, self.tok.eos_token) if e and rest == e), None)
        if final and eos:
            at = after + text[after:].index(eos)
            out.append((at, at + len(eos)))
        return out, stop


def _wants(turn: dict, opts: MaskOptions) -> bool:
    for flag in (opts.field_training,) if opts.field_training else TRAIN_FLAGS:
        value = turn.get(flag)
        if isinstance(value, bool) or value in (0, 1):  # Axolotl's sharegpt `weight` is 0/1
            return bool(value)
    return opts.train_on_inputs or turn["role"] in opts.roles_to_train


def _before_stops(text: str, end: int, stops) -> int:
    """``end`` moved back over the whitespace and stop tokens that close the turn: the diff of a
    turn with and without its tool calls can run on over them (the bare turn closes differently)."""
    while True:
        head = text[:end].rstrip()
        stop = next((s for s in stops if head.endswith(s)), None)
        if stop is None:
            return len(head)
        end = len(head) - len(stop)


def _shift(x: int, at: int, delta: int) -> int:
    return x + delta if x >= at else x


def _own_block(text: str, at: int):
    """An empty reasoning block the template wrote right before ``at``: the (start, end) of the
    whitespace inside it, "closed" for a lone closing tag, None for neither."""
    head = text[:at].rstrip()
    for opener, closer in THINK_PAIRS:
        if head.endswith(closer):
            inner = head[: len(head) - len(closer)]
            if inner.rstrip().endswith(opener):
                start = len(inner.rstrip())
                return start, len(inner)
            return "closed"
    return None
