"""The chat pane: talk to any checkpoint, during training and after.

Mount it with a ``ChatBackend`` (engine.chat.chat_backend) and include ``cockpit/chat.tcss`` in
the app's ``CSS_PATH``:

    # during training: chat on the model being trained, at step boundaries
    backend = TrainingBackend(controls, base=config.base_model, output_dir=config.output_dir,
                              run_dir=paths.run_dir, chat_config=config.chat)
    # after training, or any checkpoint: a model loaded for chat
    backend = StandaloneBackend("outputs/run/checkpoint-1000", run_dir="logs/run")
    yield ChatPane(backend)

The pane never waits on the model: requests go to the backend, which answers from its own
thread (a worker, or the training thread) through a sink that posts ``ChatPane.ChatEvent``.
After each answer the pane posts ``ChatPane.Answered`` (request and result), and after a
pass/fail mark ``ChatPane.Marked``: the host app can refresh its checklist on those.

Keys (shown in the footer): Enter sends, Esc stops the answer, F4..F12 send a preset (F1-F3
are the cockpit's tabs; every preset is also chosen from its list), ctrl+o compare on/off,
ctrl+l new conversation, ctrl+y / ctrl+n mark the focused (or latest) answer pass / fail.

The history is one target's: choosing another target starts a new conversation (a model
asked to continue another's answers looks broken), marked in the log, and every answer's
header names the target it came from.
"""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import Input, Label, OptionList, Select, Static

from cockpit.widgets.chat_presets import PRESET_KEYS, PresetList
from cockpit.widgets.chat_turn import AnswerView, ChatTurn
from engine.chat.chat import BASE, LIVE, Delta, Done, Failed, Request, Settings, Started, presets
from engine.chat.chat_backend import ChatBackend
from engine.errors import UserError
from engine.run.chat_log import Transcript


def _stats(answer) -> str:
    parts = [f"{answer.tokens} tok"]
    if answer.first_token_s is not None:
        parts.append(f"first {answer.first_token_s:.2f}s")
    if answer.tokens_per_s:
        parts.append(f"{answer.tokens_per_s:.0f} tok/s")
    parts.append(answer.reason)
    return " · ".join(parts)


class ChatPane(Vertical):
    """Chat with checkpoints, live weights or the base; compare two; mark answers.

    Args:
        backend: where answers come from (``StandaloneBackend`` or ``TrainingBackend``).
        settings: starting generation settings (default: the backend's ``chat_config``,
            else temperature 0.7, top_p 0.9, 256 tokens, no system prompt).
    """

    BINDINGS = [
        Binding("escape", "stop", "Stop"),
        Binding("ctrl+o", "toggle_compare", "Compare"),
        Binding("ctrl+l", "clear", "New chat"),
        Binding("ctrl+y", "mark('pass')", "Pass"),
        Binding("ctrl+n", "mark('fail')", "Fail"),
        Binding(PRESET_KEYS[0], "preset(0)", "Preset", key_display="F4-F12"),
        *[Binding(k, f"preset({i})", f"preset {i + 1}", show=False) for i, k in enumerate(PRESET_KEYS)][1:],
    ]

    compare: reactive[bool] = reactive(False)
    """Two targets side by side, one prompt."""

    class ChatEvent(Message):
        """An engine event (Started/Delta/Done/Failed) from the generating thread."""

        def __init__(self, event) -> None:
            super().__init__()
            self.event = event

    class Answered(Message):
        def __init__(self, request: Request, done: Done, exchange_ids: list[str]) -> None:
            super().__init__()
            self.request, self.done, self.exchange_ids = request, done, exchange_ids

    class Marked(Message):
        def __init__(self, exchange_id: str, mark: str) -> None:
            super().__init__()
            self.exchange_id, self.mark = exchange_id, mark

    def __init__(self, backend: ChatBackend, *, settings: Settings | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.backend = backend
        cfg = backend.chat_config
        self.settings = settings or Settings(
            temperature=getattr(cfg, "temperature", 0.7),
            top_p=getattr(cfg, "top_p", 0.9),
            max_new_tokens=getattr(cfg, "max_new_tokens", 256),
            system=getattr(cfg, "system", None),
        )
        self.presets = presets(cfg)
        self.transcript = Transcript(backend.run_dir, backend.base) if backend.run_dir else None
        self.history: list[dict] = []
        self.busy: Request | None = None
        self.turns: dict[str, tuple[Request, ChatTurn, object]] = {}
        self._targets = backend.targets()
        self.history_target: str | None = None
        """The target the history was answered by (None: no history yet)."""

    # -- layout -----------------------------------------------------------------------------

    def _options(self) -> list[tuple[str, str]]:
        return [(t.label, t.key) for t in self._targets]

    def _label(self, key: str) -> str:
        for t in self._targets:
            if t.key == key:
                return t.label
        return key

    def compose(self) -> ComposeResult:
        keys = [t.key for t in self._targets]
        first = self.backend.default_target if self.backend.default_target in keys else keys[0]
        second = next((k for k in keys if k != first), first)
        s = self.settings
        with Horizontal(id="chat-bar"):
            yield Select(self._options(), value=first, allow_blank=False, id="chat-target")
            yield Select(self._options(), value=second, allow_blank=False, id="chat-target-b")
            yield Label("temp", classes="chat-setting")
            yield Input(str(s.temperature), id="chat-temperature", type="number")
            yield Label("top_p", classes="chat-setting")
            yield Input(str(s.top_p), id="chat-top-p", type="number")
            yield Label("max", classes="chat-setting")
            yield Input(str(s.max_new_tokens), id="chat-max-tokens", type="integer")
        yield Input(s.system or "", placeholder="system prompt (empty: none)", id="chat-system")
        with Horizontal(id="chat-body"):
            yield VerticalScroll(id="chat-log")
            yield PresetList(self.presets, id="chat-presets")
        yield Static(self._hint(), id="chat-status")
        yield Input(placeholder="Ask anything. Enter sends, Esc stops.", id="chat-prompt")

    def _hint(self) -> str:
        where = (
            "the model being trained (answers come at step boundaries)"
            if LIVE in self._keys()
            else self.backend.base
        )
        return f"chat with {where}"

    def _keys(self) -> list[str]:
        return [t.key for t in self._targets]

    def on_mount(self) -> None:
        self.query_one("#chat-target-b").display = False
        self.query_one("#chat-log", VerticalScroll).anchor()
        self.set_interval(3.0, self.refresh_targets)

    def refresh_targets(self) -> None:
        """New checkpoints appear in the pickers as training saves them."""
        targets = self.backend.targets()
        if [(t.key, t.label) for t in targets] == [(t.key, t.label) for t in self._targets]:
            return
        self._targets = targets
        keys = self._keys()
        # The live weights go when training ends: its last checkpoint is what they became.
        fallback = next((k for k in keys if k not in (BASE, LIVE)), keys[0])
        for sel in self.query(Select):
            value = sel.value
            sel.set_options(self._options())
            sel.value = value if value in keys else fallback

    @on(Select.Changed, "#chat-target")
    async def _target_changed(self, event: Select.Changed) -> None:
        event.stop()
        if self.history and event.value != self.history_target:
            await self.new_conversation(f"new conversation with {self._label(str(event.value))}")

    async def new_conversation(self, why: str) -> None:
        """Forget the history (what is on screen stays, under a line that says so)."""
        self.history.clear()
        self.history_target = None
        log = self.query_one("#chat-log", VerticalScroll)
        if log.children:
            await log.mount(Static(f"── {why} ──", classes="chat-divider", markup=False))
        self.status(why)

    def activate(self) -> None:
        """Shown by the app: typing goes to the prompt (not to the app's single-key bindings)."""
        self.query_one("#chat-prompt", Input).focus()

    def open_checkpoint(self, path) -> None:
        """Chosen in the checkpoints table: ask that checkpoint next."""
        self.refresh_targets()
        key = str(path)
        if key not in self._keys():
            self.status(f"{path} is not a complete checkpoint of this run", error=True)
            return
        self.query_one("#chat-target", Select).value = key
        self.query_one("#chat-prompt", Input).focus()
        self.status(f"asking {self._label(key)}")

    # -- status ------------------------------------------------------------------------------

    def status(self, text: str, error: bool = False) -> None:
        bar = self.query_one("#chat-status", Static)
        bar.set_class(error, "-error")
        bar.update(text)

    # -- sending -----------------------------------------------------------------------------

    def _read_settings(self) -> Settings:
        def num(widget_id: str, kind, name: str):
            raw = self.query_one(widget_id, Input).value.strip()
            try:
                return kind(raw)
            except ValueError:
                raise UserError(f"{name} {raw!r} is not a number", f"type a number for {name}") from None

        system = self.query_one("#chat-system", Input).value.strip() or None
        return Settings(
            temperature=num("#chat-temperature", float, "temperature"),
            top_p=num("#chat-top-p", float, "top_p"),
            max_new_tokens=num("#chat-max-tokens", int, "max tokens"),
            system=system,
        ).check()

    def targets_now(self) -> list[str]:
        a = self.query_one("#chat-target", Select).value
        if not self.compare:
            return [a]
        return [a, self.query_one("#chat-target-b", Select).value]

    async def send(self, prompt: str, preset=None) -> Request | None:
        """Ask ``prompt`` of the chosen target(s); returns the request (None when refused)."""
        prompt = prompt.strip()
        if not prompt:
            return None
        if self.busy is not None:
            self.status("still answering: Esc stops it", error=True)
            return None
        try:
            settings = self._read_settings()
        except UserError as e:
            self.status(f"{e.message} ({e.fix})", error=True)
            return None
        targets = self.targets_now()
        request = Request(
            prompt,
            targets,
            settings,
            history=[] if len(targets) > 1 else list(self.history),
            preset=preset.label if preset else None,
        )
        turn = ChatTurn(request.id, prompt, [(t, self._label(t)) for t in targets])
        self.turns[request.id] = (request, turn, preset)
        self.busy = request
        await self.query_one("#chat-log", VerticalScroll).mount(turn)
        waiting = "waiting for the next step boundary..." if LIVE in self._keys() else "working..."
        self.status(waiting)
        self.backend.submit(request, self._sink)
        return request

    def _sink(self, event) -> None:
        # Called on the generating thread: post and return at once.
        self.post_message(self.ChatEvent(event))

    @on(Input.Submitted, "#chat-prompt")
    async def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if await self.send(event.value):
            event.input.value = ""

    @on(OptionList.OptionSelected, "#chat-presets")
    async def _preset_chosen(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        await self.action_preset(int(event.option.id))

    async def action_preset(self, index: int) -> None:
        if 0 <= index < len(self.presets):
            await self.send(self.presets[index].prompt, self.presets[index])

    def action_stop(self) -> None:
        if self.busy is not None:
            self.busy.stop.set()
            self.status("stopping...")

    def action_toggle_compare(self) -> None:
        self.compare = not self.compare

    def watch_compare(self, compare: bool) -> None:
        self.query_one("#chat-target-b").display = compare
        self.set_class(compare, "-compare")
        self.status("compare: one prompt, two targets (no history)" if compare else self._hint())

    async def action_clear(self) -> None:
        if self.busy is not None:
            self.status("still answering: Esc stops it", error=True)
            return
        self.history.clear()
        self.history_target = None
        self.turns.clear()
        await self.query_one("#chat-log", VerticalScroll).remove_children()
        self.status("new conversation")

    def action_mark(self, mark: str) -> None:
        """Mark the focused answer, or else the first answer of the latest finished turn."""
        view = self.app.focused if isinstance(self.app.focused, AnswerView) else None
        if view is None:
            done = [turn for _, turn, _ in self.turns.values() if turn.done]
            view = done[-1].answers[0] if done else None
        if view is None or not view.exchange_id:
            self.status("nothing to mark yet (or transcripts are off: no run folder)", error=True)
            return
        self.transcript.mark(view.exchange_id, mark)
        view.set_mark(mark)
        self.status(f"marked {mark}: {view.label}")
        self.post_message(self.Marked(view.exchange_id, mark))

    # -- answers -----------------------------------------------------------------------------

    async def on_chat_pane_chat_event(self, message: ChatEvent) -> None:
        message.stop()
        ev = message.event
        entry = self.turns.get(getattr(ev, "id", ""))
        if entry is None:
            return
        request, turn, preset = entry
        if isinstance(ev, Started):
            at = f" at step {ev.step}" if ev.step is not None else ""
            self.status(f"answering{at}... (Esc stops)")
        elif isinstance(ev, Delta):
            await turn.answers[ev.lane].append(ev.text)
        elif isinstance(ev, Done):
            for view, answer in zip(turn.answers, ev.answers, strict=True):
                await view.finish(answer.text, _stats(answer))
            ids = self.transcript.exchange(request, ev, preset) if self.transcript else []
            for view, exchange_id in zip(turn.answers, ids or [None] * len(ev.answers), strict=True):
                view.exchange_id = exchange_id
            if len(request.targets) == 1:
                self.history_target = request.targets[0]
                self.history += [
                    {"role": "user", "content": request.prompt},
                    {"role": "assistant", "content": ev.answers[0].text},
                ]
            turn.done = True
            self._finish(request)
            at = f" at step {ev.step}" if ev.step is not None else ""
            notes = "".join(f"  note: {n}" for n in ev.notes)
            self.status(
                f"answered{at} in {ev.seconds:.1f}s: " + "  |  ".join(_stats(a) for a in ev.answers) + notes
            )
            self.post_message(self.Answered(request, ev, ids))
        elif isinstance(ev, Failed):
            for view in turn.answers:
                await view.fail(ev.message)
            turn.done = True
            self._finish(request)
            self.status(f"{ev.message} ({ev.fix})" if ev.fix else ev.message, error=True)

    def _finish(self, request: Request) -> None:
        if self.busy is request:
            self.busy = None

    def on_unmount(self) -> None:
        if self.busy is not None:
            self.busy.stop.set()
