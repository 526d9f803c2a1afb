"""The checklist pane with Pilot: items shown as measured, ticks and notes written to checklist.json."""

from __future__ import annotations

import json

import pytest
from textual.app import App, ComposeResult
from textual.widgets import DataTable

from cockpit.checklist_pane import ChecklistPane
from engine.run.events import RunLog
from tests.wait import wait_for

pytestmark = pytest.mark.anyio


@pytest.fixture
def run_dir(tmp_path):
    d = tmp_path / "logs" / "run"
    log = RunLog(d / "events.jsonl")
    log.emit("start", step=0, output_dir=str(tmp_path / "out"))
    for i in range(1, 41):
        log.emit("step", step=i, loss=2.5 - 0.04 * i)
    log.close()
    return d


class Host(App):
    def __init__(self, run_dir) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.measured: list[ChecklistPane.Measured] = []

    def compose(self) -> ComposeResult:
        yield ChecklistPane(self.run_dir, refresh_s=0)

    def on_checklist_pane_measured(self, m: ChecklistPane.Measured) -> None:
        self.measured.append(m)


def row_of(table: DataTable, key: str) -> int:
    return table.get_row_index(key)


async def test_pane_shows_measured_items_and_ticks(run_dir):
    app = Host(run_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(lambda: app.measured, pilot=pilot)
        pane = app.query_one(ChecklistPane)
        table = app.query_one(DataTable)
        loss_row = table.get_row("loss_smooth")
        assert str(loss_row[0]) == "✓" and str(loss_row[3]) == "2.4 -> 0.96"
        assert str(table.get_row("docs")[0]) == "·"
        assert str(table.get_row("group:validation")[1]) == "10% run: critical checks"

        # space on a manual item ticks it.
        table.focus()
        table.move_cursor(row=row_of(table, "docs"))
        n = len(app.measured)
        await pilot.press("space")
        await wait_for(lambda: len(app.measured) > n, pilot=pilot)
        assert str(table.get_row("docs")[0]) == "✓"
        state = json.loads((run_dir / "checklist.json").read_text())
        assert state["items"]["docs"]["ticked"] is True

        # n: tick with a note, typed into the prompt.
        table.move_cursor(row=row_of(table, "dark_topics"))
        await pilot.press("n")
        assert pane.has_class("noting")
        await pilot.press(*"nuanced")
        n = len(app.measured)
        await pilot.press("enter")
        await wait_for(lambda: len(app.measured) > n, pilot=pilot)
        assert not pane.has_class("noting")
        assert str(table.get_row("dark_topics")[3]) == "ticked by hand: nuanced"

        # space again takes the first tick back.
        table.move_cursor(row=row_of(table, "docs"))
        n = len(app.measured)
        await pilot.press("space")
        await wait_for(lambda: len(app.measured) > n, pilot=pilot)
        assert str(table.get_row("docs")[0]) == "·"
        assert app.measured[-1].failing == sum(1 for i in app.measured[-1].items if i.required and not i.ok)

    # A new pane (a restart, an attach) shows the same ticks.
    app2 = Host(run_dir)
    async with app2.run_test(size=(80, 24)) as pilot:
        await wait_for(lambda: app2.measured, pilot=pilot)
        table = app2.query_one(DataTable)
        assert str(table.get_row("dark_topics")[3]) == "ticked by hand: nuanced"
        assert str(table.get_row("docs")[0]) == "·"


async def test_pane_without_a_run_folder_says_so(tmp_path):
    app = Host(tmp_path / "nothing-here")
    async with app.run_test() as pilot:
        await pilot.pause()
        summary = app.query_one("#checklist-summary")
        assert "no run folder yet" in str(summary.render())


async def test_the_selected_item_shows_whole_at_80x24(run_dir):
    """The table cuts long values; the highlighted item's command to run is shown in full below."""
    from cockpit_script import text_of
    from textual.widgets import Static

    app = Host(run_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(lambda: app.measured, pilot=pilot)
        pane = app.query_one(ChecklistPane)
        table = pane.query_one(DataTable)
        table.focus()
        table.move_cursor(row=table.get_row_index("merged"))
        await pilot.pause()
        item = next(i for i in pane.items if i.id == "merged")
        assert "leviathan-cockpit merge CHECKPOINT -o DIR" in item.detail
        detail = pane.query_one("#checklist-detail", Static)
        shown = " ".join(text_of(detail.content, width=detail.size.width).split())
        assert item.detail in shown and item.title in shown
        await pilot.press("down")
        assert pane.selected().id != "merged" and item.detail not in text_of(detail.content)


async def test_a_merge_whose_checkpoint_retention_deleted_says_so(run_dir, tmp_path):
    from cockpit_script import text_of
    from textual.widgets import Static

    from engine.run import lineage

    merged = tmp_path / "out-merged"
    merged.mkdir()
    (merged / "config.json").write_text("{}")
    (merged / "model.safetensors").write_bytes(b"")
    lineage.write_info(merged, {"kind": "merged", "checkpoint": str(tmp_path / "out" / "checkpoint-20")})
    app = Host(run_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(lambda: app.measured, pilot=pilot)
        pane = app.query_one(ChecklistPane)
        item = next(i for i in pane.items if i.id == "merged")
        assert item.status == "pass" and item.value == str(merged)
        assert (
            item.detail
            == "merged from checkpoint-20, since deleted by retention: this folder is its only copy"
        )
        table = pane.query_one(DataTable)
        table.focus()
        table.move_cursor(row=table.get_row_index("merged"))
        await pilot.pause()
        detail = pane.query_one("#checklist-detail", Static)
        assert "since deleted by retention" in " ".join(text_of(detail.content, width=78).split())
