"""``leviathan-cockpit chat``: the chat pane alone, on a model loaded for chat."""

from __future__ import annotations

import sys

from textual.app import App, ComposeResult
from textual.widgets import Footer, Header

from cockpit.chat_pane import ChatPane
from engine.chat.chat import Settings
from engine.chat.chat_backend import ChatBackend


class ChatApp(App):
    CSS_PATH = "chat.tcss"
    TITLE = "leviathan-cockpit chat"

    def __init__(self, backend: ChatBackend, settings: Settings | None = None) -> None:
        super().__init__()
        self.backend = backend
        self.settings = settings
        self.sub_title = backend.base

    def compose(self) -> ComposeResult:
        yield Header()
        yield ChatPane(self.backend, settings=self.settings, id="chat")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#chat-prompt").focus()

    def on_unmount(self) -> None:
        self.backend.close()


def chat_pane_main(args) -> int:
    """``leviathan-cockpit chat TARGET`` without ``--prompt``: the pane alone, on a terminal."""
    from engine.cli.chat_cli import prepare_chat
    from engine.errors import UserError

    backend, settings, _ = prepare_chat(args)
    if not sys.stdout.isatty():
        raise UserError("the chat pane needs a terminal", "pass --prompt TEXT for one answer on stdout")
    print(f"loading {args.target} ...", file=sys.stderr)
    backend.load()
    ChatApp(backend, settings=settings).run()
    return 0
