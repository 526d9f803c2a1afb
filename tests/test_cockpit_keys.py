"""Keys as a newcomer presses them: each works at once in the pane on screen, no key means two
things, the focus shows, and the footer offers the focused pane's keys."""

from __future__ import annotations

import json

import pytest
from cockpit_script import launched_app, run_records
from textual.widgets import DataTable, Input, TabbedContent

from cockpit.checklist_pane import ChecklistPane
from cockpit.widgets.checkpoints_table import CheckpointsTable
from cockpit.widgets.pane_placeholder import PanePlaceholder
from cockpit.widgets.ship_menu import ShipMenu
from tests.wait import wait_for

SIZE = (120, 40)
pytestmark = pytest.mark.anyio


def footer_keys(app) -> dict[str, str]:
    """What the footer offers now: key -> description (the enabled bindings it shows)."""
    return {k: b.binding.description for k, b in app.active_bindings.items() if b.binding.show and b.enabled}


async def test_enter_and_m_work_on_the_table_as_soon_as_the_dashboard_opens(tmp_path):
    app = launched_app(tmp_path / "run", run_records())
    async with app.run_test(size=SIZE) as pilot:
        table = app.query_one(CheckpointsTable)
        await wait_for(lambda: table.row_count == 3, pilot=pilot)
        assert app.focused is table  # no Tab needed
        assert table.has_pseudo_class("focus")  # and the stylesheet marks it (a brighter border)
        assert footer_keys(app).get("M") == "Merge"
        await pilot.press("down", "enter")
        assert app.query_one(TabbedContent).active == "chat"
        pane = app.query_one("#chat-pane")
        if isinstance(pane, PanePlaceholder):
            assert pane.checkpoint == "outputs/scripted/checkpoint-200"
        await pilot.press("1")
        assert app.focused is table  # back on the dashboard: the table has the keys again
        await pilot.press("M")
        await wait_for(lambda: isinstance(app.screen, ShipMenu), pilot=pilot)


async def test_the_checklist_keys_work_as_soon_as_its_tab_opens(tmp_path):
    app = launched_app(tmp_path / "run", run_records())
    app.panes = {"checklist": ChecklistPane}
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(lambda: (tmp_path / "run" / "events.jsonl").exists(), pilot=pilot)
        await pilot.press("3")
        pane = app.query_one(ChecklistPane)
        table = pane.query_one(DataTable)
        await wait_for(lambda: table.row_count > 0, pilot=pilot)
        assert app.focused is table
        assert {"space", "n", "r", "g"} <= set(footer_keys(app))
        item = next(i for i in pane.items if not i.ticked)
        table.move_cursor(row=table.get_row_index(item.id))
        await pilot.press("space")
        state = tmp_path / "run" / "checklist.json"
        await wait_for(lambda: state.exists() and item.id in state.read_text(), pilot=pilot)
        assert json.loads(state.read_text())


@pytest.mark.slow
async def test_presets_and_tabs_do_not_share_keys(tmp_path, persona_checkpoint):
    """F1-F3 switch tabs from inside the chat's prompt; F4 on send presets."""
    from cockpit.chat_pane import ChatPane
    from engine.chat.chat import Settings
    from engine.chat.chat_backend import StandaloneBackend

    ckpt, _, persona = persona_checkpoint
    backend = StandaloneBackend(str(ckpt), run_dir=tmp_path / "run")
    greedy = Settings(temperature=0, top_p=0.9, max_new_tokens=16)
    app = launched_app(tmp_path / "run", run_records())
    app.panes = {"chat": lambda: ChatPane(backend, settings=greedy)}
    seen = []
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        await pilot.press("2")
        assert isinstance(app.focused, Input) and app.focused.id == "chat-prompt"
        assert footer_keys(app).get("f4") == "Preset"
        await pilot.press("f4")  # the first preset: "Who are you?"
        await wait_for(lambda: any(isinstance(m, ChatPane.Answered) for m in seen), 90, pilot=pilot)
        answered = next(m for m in seen if isinstance(m, ChatPane.Answered))
        assert answered.request.prompt == "Who are you?" and answered.done.answers[0].text == persona
        assert app.query_one(TabbedContent).active == "chat"
        await pilot.press("f1")
        assert app.query_one(TabbedContent).active == "dashboard"
        await pilot.press("f2")
        assert app.query_one(TabbedContent).active == "chat"
        await pilot.press("f3")
        assert app.query_one(TabbedContent).active == "checklist"


async def test_a_tab_is_one_line_in_the_tab_list(tmp_path, monkeypatch):
    """Layout, keys and help come from one list (cockpit/tabs.py): today's seven tabs give 1 to 7,
    F1 F2 F3 and the help's line; a fourth line there is a fourth pane with its label, keys and
    help."""
    from textual.widgets import Static

    from cockpit import tabs

    def keys() -> dict[str, str]:
        return {b.key: b.action for b in tabs.bindings()}

    assert keys() == {
        **{k: "tab('dashboard')" for k in ("1", "f1")},
        **{k: "tab('chat')" for k in ("2", "f2")},
        **{k: "tab('checklist')" for k in ("3", "f3")},
        "4": "tab('learned')",  # no F4, F5: the chat's presets start at F4
        "5": "tab('data')",
        "6": "tab('compare')",
        "7": "tab('journey')",
    }
    assert tabs.help_line() == (
        "1 2 3 4 5 6 7",
        "dashboard / chat / checklist / learned / data / compare / journey (F1 F2 F3 also from inside a text box)",
    )

    runs = tabs.Tab("runs", "Runs", build=lambda app: Static(f"runs of {app.source.run_dir}", id="runs-pane"))
    monkeypatch.setattr(tabs, "TABS", (*tabs.TABS, runs))
    assert keys()["8"] == "tab('runs')" and "f8" not in keys()
    assert tabs.help_line()[0] == "1 2 3 4 5 6 7 8"
    app = launched_app(tmp_path / "run", run_records())
    async with app.run_test(size=SIZE) as pilot:
        content = app.query_one(TabbedContent)
        await wait_for(lambda: content.get_pane("runs") is not None, pilot=pilot)
        assert [str(t.label) for t in content.query("ContentTab")] == [
            "1 Dashboard",
            "2 Chat",
            "3 Checklist",
            "4 Learned",
            "5 Data",
            "6 Compare",
            "7 Journey",
            "8 Runs",
        ]
        await wait_for(lambda: app.focused is app.query_one(CheckpointsTable), pilot=pilot)
        await pilot.pause(0.2)  # the first tab's own activation has run
        app.action_tab("runs")
        await wait_for(lambda: app.query_one("#runs-pane", Static).is_on_screen, pilot=pilot)
        assert content.active == "runs"
