"""The question before quitting a running training job: ``y`` stops it safely, anything else keeps it."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static


class ConfirmQuit(ModalScreen[bool]):
    BINDINGS = [
        Binding("y", "answer(True)", "Stop and quit"),
        Binding("n,escape,q", "answer(False)", "Keep training"),
    ]

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box"):
            yield Static(
                "[b]Stop training and quit?[/b]\n\n"
                "Training stops at the next step boundary, saves a checkpoint of that step "
                "and writes the end of the run log; then the cockpit exits.\n"
                "Resume later with the same command (--resume auto).\n\n"
                "[b]y[/b] stop and quit    [b]n[/b] keep training",
                id="confirm-text",
            )

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)
