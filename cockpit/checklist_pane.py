"""The checklist pane: the guide's gates for this run, measured or ticked.

Automatic items show their measured value, pass/fail and when the evidence was recorded;
manual items (and any automatic one the operator vouches for) are ticked with ``space``, or
with a note with ``n``. On the merged, quantized and uploaded items ``g`` runs that step (the
ship menu, ``cockpit/ship.py``). The list is measured in a worker thread (reading a long run
log takes a moment) every few seconds, on ``r`` and when a background job ends; state lives in
``logs/<run>/checklist.json`` through ``engine.evaluate.checklist``, so a restart or an ``attach``
shows the same ticks.

Self-contained: mount it with a run folder, or inside the cockpit app, where it finds the
run folder on ``app.source.run_dir``.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.css.query import NoMatches
from textual.message import Message
from textual.widgets import DataTable, Input, Static

from cockpit.messages import JobEnded, ShipRequested
from cockpit.widgets.table import Table
from engine.cli.steps import menu_actions
from engine.evaluate import checklist
from engine.evaluate.checklist_items import GROUPS, ItemStatus

VALUE_WIDTH = 64
GLYPHS = {"pass": ("✓", "green"), "fail": ("✗", "red"), "pending": ("·", "dim")}
STEPS = {a.ticks: a.id for a in menu_actions() if a.ticks}
"""Items a post-training step makes pass (default item ids), and the ship menu's action for each
(``engine.cli.steps``): merged -> merge, quantized -> quantize, hub_upload -> push_dry."""


def ago(t: float | None, now: float | None = None) -> str:
    if not t:
        return ""
    s = max(0.0, (now or time.time()) - t)
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{int(s // n)}{unit} ago"
    return f"{int(s)}s ago"


def detail_text(it: ItemStatus) -> str:
    lines = [f"{it.title}{'' if it.required else ' (optional)'}: {it.status}"]
    if it.ticked:
        lines.append("ticked by hand" + (f": {it.note}" if it.note else ""))
    for text in (it.value, it.detail):
        if text and text not in lines:
            lines.append(text)
    return "\n".join(lines)


class ChecklistPane(Vertical):
    """The run's checklist: a table of items, a summary line, and a note prompt."""

    DEFAULT_CSS = """
    ChecklistPane { height: 1fr; }
    ChecklistPane #checklist-summary { height: 1; padding: 0 1; }
    ChecklistPane DataTable { height: 1fr; }
    ChecklistPane #checklist-detail { height: auto; max-height: 6; padding: 0 1; border-top: solid $panel-lighten-2; }
    ChecklistPane #checklist-note { display: none; }
    ChecklistPane.noting #checklist-note { display: block; }
    """

    BINDINGS = [
        Binding("space", "toggle", "Tick / untick"),
        Binding("n", "note", "Tick with note"),
        Binding("r", "refresh", "Re-measure"),
        Binding("g", "run_step", "Run step"),
        Binding("escape", "cancel_note", "Cancel", show=False),
    ]

    @dataclass
    class Measured(Message):
        """Posted after every measurement: for a tab title or a status line."""

        items: list[ItemStatus]
        failing: int

    def __init__(
        self, run_dir: str | Path | None = None, config=None, *, refresh_s: float = 5.0, **kw
    ) -> None:
        super().__init__(**kw)
        self.add_class("job-view")
        self.run_dir = Path(run_dir) if run_dir else None
        self.config = config
        self.refresh_s = refresh_s
        self.items: list[ItemStatus] = []
        self._noting: str | None = None

    def compose(self) -> ComposeResult:
        yield Static("measuring...", id="checklist-summary")
        table = Table(id="checklist-table", cursor_type="row", zebra_stripes=True)
        table.add_columns("", "item", "when", "measured")
        yield table
        yield Static("", id="checklist-detail", markup=False)
        yield Input(placeholder="note (enter: tick with this note, esc: cancel)", id="checklist-note")

    def on_mount(self) -> None:
        self.border_title = "Checklist"
        if self.run_dir is None:
            source = getattr(self.app, "source", None)
            if getattr(source, "run_dir", None):
                self.run_dir = Path(source.run_dir)
        self.action_refresh()
        if self.refresh_s:
            self.set_interval(self.refresh_s, self.action_refresh)

    def activate(self) -> None:
        """Shown by the app: the table takes the keys (space, n, r, g) at once."""
        if not self.has_class("noting"):
            self.query_one(DataTable).focus()

    # -- measuring (worker thread) --------------------------------------------------------

    def action_refresh(self) -> None:
        if self.run_dir is None or not self.run_dir.is_dir():
            self.query_one("#checklist-summary", Static).update("no run folder yet")
            return
        self._measure()

    @work(thread=True, exclusive=True, group="checklist")
    def _measure(self) -> None:
        try:
            items = checklist.evaluate(self.run_dir, self.config)
        except Exception as e:  # a bad config section: say it here, keep the cockpit up
            self._hand_over(self._error, str(e))
            return
        self._hand_over(self._show, items)

    def _hand_over(self, fn, arg) -> None:
        # A measurement that ends while the cockpit closes has no one to show it to.
        with contextlib.suppress(RuntimeError, NoMatches):
            self.app.call_from_thread(fn, arg)

    def _error(self, message: str) -> None:
        with contextlib.suppress(NoMatches):  # the pane is being taken down
            self.query_one("#checklist-summary", Static).update(Text(f"checklist: {message}", style="red"))

    def _show(self, items: list[ItemStatus]) -> None:
        self.items = items
        try:
            table = self.query_one(DataTable)
        except NoMatches:  # the pane is being taken down
            return
        keep = table.cursor_row
        table.clear()
        now = time.time()
        group = None
        for it in items:
            if it.group != group:
                group = it.group
                table.add_row("", Text(GROUPS.get(group, group), style="bold"), "", "", key=f"group:{group}")
            glyph, style = GLYPHS[it.status]
            title = Text(it.title + ("" if it.required else " (optional)"))
            if it.ticked:
                value = Text("ticked by hand" + (f": {it.note}" if it.note else ""), style="italic")
            elif it.value:
                value = Text(it.value)
            else:
                value = Text(it.detail, style="dim")
            when = ago(it.ticked_at if it.ticked else it.when, now)
            value.truncate(VALUE_WIDTH, overflow="ellipsis")
            table.add_row(Text(glyph, style=style), title, when, value, key=it.id)
        if table.row_count:
            # A group's heading row says nothing of its own: start on the first item.
            table.move_cursor(row=min(max(keep, 1), table.row_count - 1))
        bad = checklist.failing(items)
        done = sum(i.ok for i in items)
        summary = f"{done}/{len(items)} passed · {len(bad)} required not passed"
        self.query_one("#checklist-summary", Static).update(summary)  # the keys are in the footer
        self.show_detail()
        self.post_message(self.Measured(items, len(bad)))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.show_detail()

    def show_detail(self) -> None:
        """The highlighted item in full: the table cuts long values, the commands it names included."""
        item = self.selected()
        with contextlib.suppress(NoMatches):
            self.query_one("#checklist-detail", Static).update(detail_text(item) if item else "")

    def on_job_ended(self, message: JobEnded) -> None:
        self.action_refresh()

    # -- running a step ---------------------------------------------------------------------

    def action_run_step(self) -> None:
        item = self.selected()
        if item is None:
            return
        if item.id not in STEPS:
            self.app.notify("g runs merge, quantize and push: on those items only", timeout=4)
            return
        self.post_message(ShipRequested(STEPS[item.id]))

    # -- ticking --------------------------------------------------------------------------

    def selected(self) -> ItemStatus | None:
        table = self.query_one(DataTable)
        if not table.row_count:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return next((i for i in self.items if i.id == key), None)

    def action_toggle(self) -> None:
        item = self.selected()
        if item is None or self.run_dir is None:
            return
        checklist.tick(self.run_dir, item.id, None, not item.ticked, self.config)
        self._measure()

    def action_note(self) -> None:
        item = self.selected()
        if item is None:
            return
        self._noting = item.id
        self.add_class("noting")
        note = self.query_one("#checklist-note", Input)
        note.value = item.note
        note.placeholder = f"note for “{item.title}” (enter: tick with this note, esc: cancel)"
        note.focus()

    def action_cancel_note(self) -> None:
        self._noting = None
        self.remove_class("noting")
        self.query_one(DataTable).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if self._noting and self.run_dir is not None:
            checklist.tick(self.run_dir, self._noting, event.value.strip(), True, self.config)
        self.action_cancel_note()
        self._measure()
