"""Habits of the terminal apps users know (k9s, lazygit, nvitop, Textual's own): every key's
action by name in the command palette (ctrl+p), ``/`` to filter the focused table, ``j``/``k``
beside the arrows.

The app keeps only the bindings and one-line actions; what they do is here, so that the tab
registry can take them over as they are.
"""

from __future__ import annotations

from functools import partial

from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding
from textual.screen import ModalScreen
from textual.widgets import Input, TextArea

BINDINGS = [
    Binding("j", "nav('down')", "Down", show=False),
    Binding("k", "nav('up')", "Up", show=False),
    Binding("slash", "filter", "Filter", key_display="/", show=False),
]


def binding_commands(app, screen):
    """A palette command for every key that acts now (as the footer and ``?`` offer them)."""
    seen = set()
    for active in screen.active_bindings.values():
        b = active.binding
        name = b.description or b.action
        if not active.enabled or not b.description or name in seen:
            continue
        seen.add(name)
        shown = b.key_display or app.get_key_display(b)
        yield SystemCommand(name, f"key {shown}", partial(app.run_action, b.action, active.node))


def typing(focused) -> bool:
    """Keys are text there: j, k and / type themselves."""
    return isinstance(focused, (Input, TextArea))


def nav(app, direction: str) -> None:
    w = app.focused
    for name in (f"action_cursor_{direction}", f"action_scroll_{direction}"):
        if w is not None and hasattr(w, name):
            getattr(w, name)()
            return


def can_filter(widget) -> bool:
    """Every table of the cockpit is a ``Table`` (cockpit/widgets/table.py), which filters."""
    return hasattr(widget, "apply_filter")


class FilterBar(ModalScreen[str | None]):
    """A one-line filter at the bottom; each keystroke filters, Enter keeps it, Escape clears it."""

    DEFAULT_CSS = """
    FilterBar { align: left bottom; background: transparent; }
    FilterBar > Input { width: 100%; dock: bottom; }
    """
    BINDINGS = [Binding("escape", "clear", "Clear filter")]

    def __init__(self, table, text: str = "") -> None:
        super().__init__()
        self.table, self.text = table, text

    def compose(self) -> ComposeResult:
        yield Input(self.text, placeholder="filter rows: type, Enter keeps, Escape clears", id="filter-input")

    def on_input_changed(self, event: Input.Changed) -> None:
        apply(self.table, event.value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)

    def action_clear(self) -> None:
        apply(self.table, "")
        self.dismiss("")


def apply(table, text: str) -> None:
    table.apply_filter(text)


def open_filter(app) -> None:
    w = app.focused
    if not can_filter(w):
        app.notify("/ filters a table: focus one first (Tab); this one has no filter", timeout=4)
        return
    app.push_screen(FilterBar(w, getattr(w, "filter", "") or ""))
