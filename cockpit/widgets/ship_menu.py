"""The ship menu: pick a post-training step (merge, quantize, export, push) and its folders.

It only gathers the choice and checks it with the engine's own checks (``check``), so a
folder that exists or a missing repo id is said here, before any job starts. Dismissed with
a ``ShipChoice``, or None on escape.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from cockpit.widgets.table import Options
from engine.cli.steps import ShipChoice, menu_actions

__all__ = ["ShipChoice", "ShipMenu"]


class ShipMenu(ModalScreen[ShipChoice | None]):
    BINDINGS = [
        Binding("escape", "close", "Close"),
        Binding("slash", "app.filter", "Filter", show=False),  # a modal screen hides the app's keys
    ]

    def __init__(
        self,
        defaults: ShipChoice,
        check: Callable[[ShipChoice], str | None],
        *,
        warning: str = "",
    ) -> None:
        super().__init__()
        self.defaults = defaults
        self.check = check
        self.warning = warning

    def compose(self) -> ComposeResult:
        d = self.defaults
        with Vertical(id="ship-box"):
            head = Text.assemble(("Post-training steps", "bold"), "\ncheckpoint  ")
            head.append(
                str(d.checkpoint) if d.checkpoint else "none complete yet", "" if d.checkpoint else "dim"
            )
            yield Static(head, id="ship-head")
            yield from _field(
                "merge into", "ship-merged-out", d.merged_out, "a new folder for the merged model"
            )
            yield from _field("model folder", "ship-model-dir", d.model_dir, "a merged (or quantized) folder")
            yield from _field("repo id", "ship-repo-id", d.repo_id, "USER/NAME on the Hugging Face Hub")
            yield Options(*(Option(a.label, id=a.id) for a in menu_actions()), id="ship-actions")
            if self.warning:
                yield Static(Text(self.warning, style="yellow"), id="ship-warning")
            yield Static("", id="ship-error")
            yield Static("[b]⏎[/b] run   [b]tab[/b] next field   [b]esc[/b] close", id="ship-keys")

    def on_mount(self) -> None:
        actions = self.query_one("#ship-actions", OptionList)
        actions.highlighted = actions.get_option_index(self.defaults.action)
        actions.focus()

    def choice(self, action: str) -> ShipChoice:
        def path(field: str) -> Path | None:
            value = self.query_one(f"#{field}", Input).value.strip()
            return Path(value).expanduser() if value else None

        return ShipChoice(
            action,
            self.defaults.checkpoint,
            path("ship-merged-out"),
            path("ship-model-dir"),
            self.query_one("#ship-repo-id", Input).value.strip(),
        )

    def run(self, action: str) -> None:
        choice = self.choice(action)
        problem = self.check(choice)
        if problem:
            error = self.query_one("#ship-error", Static)
            error.update(Text(problem, style="red"))
            error.add_class("-shown")
            return
        self.dismiss(choice)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.run(event.option.id or "")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        actions = self.query_one("#ship-actions", OptionList)
        if actions.highlighted_option is not None:
            self.run(actions.highlighted_option.id or "")

    def action_close(self) -> None:
        self.dismiss(None)


def _field(label: str, field_id: str, value, placeholder: str) -> ComposeResult:
    with Horizontal(classes="ship-field"):
        yield Label(label)
        yield Input(str(value) if value else "", placeholder=placeholder, id=field_id, compact=True)
