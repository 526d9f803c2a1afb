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
from textual.widgets import DataTable, Input, TextArea

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


def filter_rows(table: DataTable, text: str) -> None:
    """Keep the rows with ``text`` in a cell (any case); an empty text brings every row back.

    A table that redraws itself from its own data (``apply_filter``) filters there instead.
    """
    saved = getattr(table, "_filter_saved", None)
    if saved is None:
        saved = [(k.value, table.get_row(k), table.rows[k].height) for k in table.rows]
        table._filter_saved = saved
    table.clear()
    needle = text.lower()
    for key, cells, height in saved:
        if not needle or any(needle in str(c).lower() for c in cells):
            table.add_row(*cells, key=key, height=height)
    if not needle:
        table._filter_saved = None
    table.border_subtitle = f"/{text}" if text else None


def can_filter(widget) -> bool:
    """Tables that own their rows: ``apply_filter``, or ``filterable`` (rows set once, not updated
    by key afterwards: a filtered-out row could not be updated)."""
    return hasattr(widget, "apply_filter") or (
        isinstance(widget, DataTable) and getattr(widget, "filterable", False)
    )


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
    if hasattr(table, "apply_filter"):
        table.apply_filter(text)
    else:
        filter_rows(table, text)


def open_filter(app) -> None:
    w = app.focused
    if not can_filter(w):
        app.notify("/ filters a table: focus one first (Tab); this one has no filter", timeout=4)
        return
    app.push_screen(FilterBar(w, getattr(w, "filter", "") or ""))
