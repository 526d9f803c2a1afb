"""One exchange of the chat pane: the prompt, then one answer per target (two when comparing)."""

from __future__ import annotations

from rich.markup import escape
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Markdown, Static


class AnswerView(Vertical, can_focus=True):
    """A streaming answer: a header (target, then stats and mark) over Markdown."""

    def __init__(self, target: str, label: str) -> None:
        super().__init__(classes="chat-answer")
        self.target = target
        self.label = label
        self.text = ""  # what has been streamed so far; the final answer once done
        self.exchange_id: str | None = None  # set once written to the transcript
        self.mark: str | None = None
        self.stats = ""
        self._stream = None

    def compose(self) -> ComposeResult:
        yield Static(f"[b]{escape(self.label)}[/]", classes="chat-answer-head")
        yield Markdown("", classes="chat-answer-body")

    @property
    def markdown(self) -> Markdown:
        return self.query_one(Markdown)

    def _head(self) -> None:
        badge = {"pass": " [b green]PASS[/]", "fail": " [b red]FAIL[/]"}.get(self.mark or "", "")
        stats = f"  [dim]{self.stats}[/]" if self.stats else ""
        self.query_one(".chat-answer-head", Static).update(f"[b]{escape(self.label)}[/]{stats}{badge}")

    async def append(self, text: str) -> None:
        if self._stream is None:
            self._stream = Markdown.get_stream(self.markdown)
        self.text += text
        await self._stream.write(text)

    async def finish(self, text: str, stats: str) -> None:
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        if text != self.text:  # streamed pieces can differ from one decode of the whole answer
            self.text = text
            await self.markdown.update(text)
        self.stats = stats
        self._head()

    async def fail(self, message: str) -> None:
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        self.add_class("-failed")
        self.stats = "failed"
        self._head()
        await self.markdown.update(f"**{message}**")

    def set_mark(self, mark: str) -> None:
        self.mark = mark
        self._head()


class ChatTurn(Vertical):
    """The prompt and its answer(s), side by side when comparing."""

    def __init__(self, request_id: str, prompt: str, targets: list[tuple[str, str]]) -> None:
        super().__init__(classes="chat-turn")
        self.request_id = request_id
        self.prompt = prompt
        self.targets = targets  # (key, label) per lane
        self.done = False

    def compose(self) -> ComposeResult:
        yield Static(self.prompt, classes="chat-user", markup=False)
        with Horizontal(classes="chat-answers"):
            for key, label in self.targets:
                yield AnswerView(key, label)

    @property
    def answers(self) -> list[AnswerView]:
        return list(self.query(AnswerView))
