"""``a``: the folder of another run to put beside this one in the Compare tab."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static


class AddRun(ModalScreen[Path | None]):
    """Answers the run log's folder once it is one (``find_run_log``), else says why and stays."""

    BINDINGS = [Binding("escape", "close", "Close")]

    def compose(self) -> ComposeResult:
        with Vertical(id="add-run", classes="panel"):
            yield Label("Add a run to compare (its folder, logs/<run-name>):")
            yield Input(placeholder="logs/leviathan_10pct_test", id="add-run-path")
            yield Static(id="add-run-error")

    def on_mount(self) -> None:
        self.query_one("#add-run", Vertical).border_title = "Runs side by side"
        self.query_one(Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        from cockpit.run_log_path import find_run_log
        from engine.errors import UserError

        try:
            log = find_run_log(event.value.strip() or ".")
        except UserError as e:
            self.query_one("#add-run-error", Static).update(f"[red]{e}[/]")
            return
        self.dismiss(log.parent)

    def action_close(self) -> None:
        self.dismiss(None)
