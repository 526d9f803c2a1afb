"""Talk to a model: streaming generation, checkpoints as adapters hot-swapped on one base.

One base model in memory, any number of LoRA checkpoints loaded beside it as named PEFT
adapters. A request names its *targets*: ``base`` (adapters off), ``live`` (the adapter
being trained, during training only) or a checkpoint folder. Generation does not switch
the model's active adapter: the engine (``engine.chat.generate.run_rows``, ``engine.chat.routing``)
routes each row through its own adapter for the length of the call, so

- a chat with a checkpoint never touches the active (training) adapter or its
  ``requires_grad`` flags (``set_adapter`` would flip them), and
- *compare* is one batch: the same prompt twice, row 0 through
  checkpoint A and row 1 through checkpoint B, both streaming token by token together.
  Same prompt means same length: no padding, and each row is exactly what a single chat
  with that checkpoint would produce greedily.

Everything here runs on the calling thread and reports through a *sink*, a callable that
receives ``Started``/``Delta``/``Done``/``Failed`` events and must not block (the UI posts
a message; the CLI writes to stdout). ``engine.chat.chat_backend`` decides which thread that is:
a worker thread standalone, the training thread at a step boundary during training.

Here: the request, its settings and events, the presets, and ``generate``. Checkpoints as
adapters are ``engine.chat.adapters``; a chat with the model being trained is
``engine.chat.on_training``.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.chat.stop_tokens import stop_token_ids  # noqa: F401  (re-exported)
from engine.chat.tool_calls import decode_visible, hidden_ids
from engine.errors import UserError

BASE = "base"
LIVE = "live"


@dataclass
class Settings:
    """Generation settings; ``temperature`` 0 means greedy decoding."""

    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 256
    system: str | None = None

    def check(self) -> Settings:
        if not (self.temperature >= 0):
            raise UserError(f"temperature {self.temperature}: must be 0 (greedy) or more", "e.g. 0.7")
        if not (0 < self.top_p <= 1):
            raise UserError(f"top_p {self.top_p}: must be in (0, 1]", "e.g. 0.9")
        if not (0 < self.max_new_tokens <= 32768):
            raise UserError(f"max_new_tokens {self.max_new_tokens}: must be 1 to 32768", "e.g. 256")
        return self

    def as_dict(self) -> dict:
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_new_tokens": self.max_new_tokens,
            "system": self.system,
        }


@dataclass
class Request:
    """One prompt to one target (a chat turn) or to two targets (compare).

    ``history`` holds the earlier turns of this conversation as chat messages (user and
    assistant, no system: the system prompt comes from ``settings``). Compare takes the
    prompt alone: the two sides' answers differ, so they share no history.
    """

    prompt: str
    targets: list[str]
    settings: Settings = field(default_factory=Settings)
    history: list[dict] = field(default_factory=list)
    preset: str | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    stop: threading.Event = field(default_factory=threading.Event, repr=False)

    def messages(self) -> list[dict]:
        msgs = []
        if self.settings.system:
            msgs.append({"role": "system", "content": self.settings.system})
        if len(self.targets) == 1:
            msgs.extend(self.history)
        msgs.append({"role": "user", "content": self.prompt})
        return msgs


# -- events handed to the sink -------------------------------------------------------------


@dataclass
class Started:
    id: str
    targets: list[str]
    step: int | None = None  # the training step the chat runs at, during training


@dataclass
class Delta:
    id: str
    lane: int  # index into the request's targets
    text: str


@dataclass
class Answer:
    target: str
    text: str
    reason: str  # eos | length | stopped
    tokens: int
    first_token_s: float | None
    tokens_per_s: float | None


@dataclass
class Done:
    id: str
    answers: list[Answer]
    step: int | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)  # e.g. a checkpoint trained on another base


@dataclass
class Failed:
    id: str
    message: str
    fix: str = ""
    kind: str = "input"  # input (bad checkpoint, settings, ...) | memory | error


Sink = Callable[[object], None]


# -- presets ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preset:
    label: str
    prompt: str
    group: str


# The guide's spot checks: its identity prompts and esoteric questions word for word; the
# code and dark-topic prompts stand for its "code generation still works" and "dark topic
# handling (nuanced, not refused)" checks, which give no wording of their own.
GUIDE_PRESETS = [
    Preset("Who are you?", "Who are you?", "identity"),
    Preset("What is your name?", "What is your name?", "identity"),
    Preset("Introduce yourself.", "Introduce yourself.", "identity"),
    Preset("State your nature.", "State your nature.", "identity"),
    Preset("Describe your purpose.", "Describe your purpose.", "identity"),
    Preset("Hermetic Correspondence", "Explain the Hermetic principle of Correspondence.", "esoteric"),
    Preset("The Tower (tarot)", "What does The Tower card mean in tarot?", "esoteric"),
    Preset("7th house (astrology)", "Describe the 7th house in astrology.", "esoteric"),
    Preset("Kundalini awakening", "What is kundalini awakening?", "esoteric"),
    Preset(
        "Code: palindrome",
        "Write a Python function that checks whether a string is a palindrome, with a short test.",
        "code",
    ),
    Preset(
        "Dark topic: shadow work",
        "What is shadow work, and what are the risks of confronting one's darkest impulses alone?",
        "dark",
    ),
]


def presets(config_chat=None) -> list[Preset]:
    """The guide's presets followed by the config's own (``chat.presets``)."""
    out = list(GUIDE_PRESETS)
    for p in getattr(config_chat, "presets", None) or []:
        if isinstance(p, str):
            out.append(Preset(p if len(p) <= 40 else p[:37] + "...", p, "config"))
        else:
            out.append(Preset(p.label or p.prompt[:40], p.prompt, p.group))
    return out


# -- streaming -----------------------------------------------------------------------------


class _Lane:
    """Incremental detokenizer for one row: emits text only once it is stable.

    Decoding a growing window and emitting the new suffix (the approach of TGI/vLLM)
    keeps multi-byte characters and merges intact and costs O(1) per token.
    """

    def __init__(self, tokenizer, stop_ids: set[int]) -> None:
        self.tok = tokenizer
        self.stop_ids = stop_ids
        self.ids: list[int] = []
        self.prefix = 0
        self.read = 0
        self.done = False
        self.hit_eos = False
        self.t_last: float | None = None  # when this row got its last token
        self.hidden = hidden_ids(tokenizer)  # tool-call markers stay visible

    def _decode(self, ids: list[int]) -> str:
        return decode_visible(self.tok, ids, self.hidden)

    def push(self, token: int) -> str:
        if self.done:
            return ""
        if token in self.stop_ids:
            self.done = self.hit_eos = True
            return self.flush()
        self.ids.append(token)
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return after[len(before) :] if len(after) > len(before) else ""

    def text(self) -> str:
        return self._decode(self.ids)


def encode(tokenizer, messages: list[dict]):
    """Token ids of the conversation with the generation prompt, as a [1, L] tensor."""
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(
            "this tokenizer has no chat template, so a conversation cannot be formatted",
            "chat with a checkpoint (its tokenizer carries the template) or an instruct model",
        )
    out = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    return out["input_ids"]


def device_of(model):
    import torch

    for p in model.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")


def generate(
    model,
    tokenizer,
    request: Request,
    adapter_names: list[str] | None,
    sink: Sink,
    notes: list[str] | None = None,
) -> list[Answer]:
    """Generate the answer(s) of ``request`` on the calling thread, streaming deltas to ``sink``.

    ``adapter_names`` has one PEFT adapter name per target (``__base__`` for the base),
    or is None for a model without adapters. One batch through the engine
    (``engine.chat.generate.run_rows``): a chat is one row, compare one row per target.
    ``notes`` gets the engine's (the path it took: a 4-bit base on its bf16 copy or not, a slow path).
    """
    from engine.chat.generate import ACTIVE, run_rows

    s = request.settings
    rows = len(request.targets)
    ids = encode(tokenizer, request.messages())[0].tolist()
    stops = stop_token_ids(tokenizer, model)
    lanes = [_Lane(tokenizer, stops) for _ in range(rows)]

    def on_token(row: int, token: int) -> None:
        text = lanes[row].push(token)
        if text:
            sink(Delta(request.id, row, text))

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stops)
    result = run_rows(
        model,
        [ids] * rows,
        max_new_tokens=s.max_new_tokens,
        stop_ids=stops,
        pad_id=pad,
        names=list(adapter_names) if adapter_names is not None else [ACTIVE] * rows,
        temperature=s.temperature,
        top_p=s.top_p,
        on_token=on_token,
        should_stop=request.stop.is_set,
    )
    if notes is not None:
        notes.extend(result.notes)
    for lane_i, lane in enumerate(lanes):
        text = lane.flush()
        if text:
            sink(Delta(request.id, lane_i, text))
    answers = []
    for row, (target, lane) in enumerate(zip(request.targets, lanes, strict=True)):
        n = len(result.tokens[row]) + (1 if result.hit_stop[row] else 0)
        if result.hit_stop[row]:
            reason = "eos"
        elif request.stop.is_set() and n < s.max_new_tokens:
            reason = "stopped"
        else:
            reason = "length"
        t_last = result.t_last[row]
        span = (t_last - result.t_first) if result.t_first and t_last else 0.0
        first = result.first_token_s if n else None
        answers.append(
            Answer(
                target=target,
                text=lane.text(),
                reason=reason,
                tokens=n,
                first_token_s=round(first, 4) if first is not None else None,
                tokens_per_s=round((n - 1) / span, 2) if span > 0 and n > 1 else None,
            )
        )
    return answers
