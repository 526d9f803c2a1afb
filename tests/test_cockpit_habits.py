"""Habits every view gets by construction: ``/`` filters every table the cockpit composes, the
mouse clicks tabs, checkpoints and checklist items, and every key is in the footer or in ``?``."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from conftest import DEMO_DATA, base_config, cli_here
from rich.text import Text
from test_views_pilot import _run
from textual.widgets import DataTable, OptionList, Select

from cockpit.launch import build_attach_app
from cockpit.widgets.table import Options, Table
from engine.config.config import load_config
from engine.data.datasummary import find_prepared

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_model):
    """A prepared folder (real ``preprocess``) with two bad rows, so both Data tables have rows."""
    root = tmp_path_factory.mktemp("habits")
    rows = DEMO_DATA.read_text().splitlines()[:40]
    data = root / "mix.jsonl"
    data.write_text("\n".join([*rows[:20], '{"messages": [', *rows[20:], "not json"]) + "\n")
    raw = base_config(tiny_model("qwen3"), data, skip_bad_rows=True, output_dir=str(root / "out"))
    cfg = root / "run.yaml"
    cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
    done = cli_here("preprocess", cfg)
    assert done.returncode == 0, done.stderr
    return find_prepared(load_config(cfg)[0]), raw


def _with_data(tmp_path, prepared):
    prepared, raw = prepared
    run_dir = _run(tmp_path)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({**raw, "run_name": "r"}))
    with (run_dir / "events.jsonl").open("a") as f:
        f.write(json.dumps({"t": 9.0, "kind": "data", "step": 0, "prepared": str(prepared)}) + "\n")
    return run_dir


def _rows(widget) -> list[str]:
    """The rows of a table, or the options of a list, as shown (lower case)."""
    if isinstance(widget, OptionList):
        options = [widget.get_option_at_index(i) for i in range(widget.option_count)]
        return [Text.from_markup(str(o.prompt)).plain.lower() for o in options]
    return [" ".join(getattr(c, "plain", str(c)) for c in widget.get_row(k)).lower() for k in widget.rows]


def _needle(rows: list[str]) -> str:
    """A word of some row that not every row holds."""
    for row in rows:
        for word in row.split():
            if any(word not in other for other in rows):
                return word
    raise AssertionError(f"every row holds every word: {rows}")


async def _settle(pilot, app, tab: str) -> list[DataTable]:
    """The tab's tables, once each has rows (they fill from the run log and threads)."""
    pane = app.query_one(f"#{tab}")
    for _ in range(100):
        tables = list(pane.query(DataTable))
        if tables and all(t.row_count >= 2 for t in tables):
            break
        await pilot.pause(0.05)
    assert tables or tab == "chat", pane.query("Static").first().render()
    return tables


async def _filters(pilot, widget) -> None:
    """``/`` and a word of one row leave the rows holding it; Escape brings them all back."""
    before = _rows(widget)
    needle = _needle(before)
    widget.focus()
    await pilot.press("slash", *needle)
    await pilot.pause()
    after = _rows(widget)
    want = [r for r in before if needle in r]
    if type(widget).apply_filter in (Table.apply_filter, Options.apply_filter):  # cells as shown
        assert after == want, (widget.id, needle)
    else:  # its own match (a path, a prompt not shown whole): at least those shown
        assert set(want) <= set(after) < set(before), (widget.id, needle)
    await pilot.press("escape")
    await pilot.pause()
    assert _rows(widget) == before


async def test_slash_filters_every_table_and_list_of_every_tab(tmp_path, prepared):
    from cockpit import tabs
    from cockpit.habits import FilterBar

    app = build_attach_app(_with_data(tmp_path, prepared))
    seen = []
    async with app.run_test(size=(120, 40)) as pilot:
        for number, tab in enumerate(tabs.TABS, 1):
            await pilot.press(str(number))
            await _settle(pilot, app, tab.id)
            for widget in app.query_one(f"#{tab.id}").query("DataTable, OptionList"):
                if any(isinstance(a, Select) for a in widget.ancestors):
                    continue  # a Select's drop-down: Textual's own, it searches as you type
                assert isinstance(widget, (Table, Options)), f"{widget!r} is plain: `/` cannot filter it"
                if widget.id == "compare-diff" and len(_rows(widget)) < 2:
                    continue  # one run attached: "(same config)"; the class is what makes `/` work
                assert len(_rows(widget)) >= 2, f"{widget.id or widget!r} has no rows to filter"
                await _filters(pilot, widget)
                seen.append(widget.id or type(widget).__name__)
        await pilot.press("1", "M")  # the ship menu's list of actions
        await pilot.pause()
        actions = app.screen.query_one("#ship-actions")
        assert isinstance(actions, Options)
        await _filters(pilot, actions)
        path = app.screen.query_one("#ship-merged-out")
        path.focus()
        path.value = ""
        await pilot.press("slash", "t")  # in a text box / is typed (paths): no filter
        assert path.value == "/t" and not isinstance(app.screen, FilterBar)
    want = {"checkpoints", "checklist-table", "probe-answers", "data-categories", "data-bad", "chat-presets"}
    want.add("journey-table")
    assert set(seen) >= want, seen


def _contrast(a, b) -> float:
    """WCAG 2 contrast ratio of two RGB colours."""

    def lum(rgb):
        c = [v / 255 for v in rgb]
        c = [v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4 for v in c]
        return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]

    hi, lo = sorted((lum(a), lum(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


@pytest.mark.parametrize("theme", ["textual-dark", "textual-light"])
async def test_chart_colours_read_on_the_theme(tmp_path, theme):
    """Every colour the loss and category charts draw stands out from their background (WCAG
    ratio >= 2.5; 3 is the guideline for graphics), ANSI colours as the theme maps them."""
    from rich.style import Style
    from textual.color import Color

    from cockpit.widgets.category_chart import CategoryChart
    from cockpit.widgets.loss_chart import LossChart, SafePlot

    app = build_attach_app(_run(tmp_path))
    async with app.run_test(size=(120, 40)) as pilot:
        app.theme = theme
        await pilot.press("4")
        chart = app.query_one(CategoryChart)
        for _ in range(100):
            if len(chart.points) == 2 and len(app.query_one(LossChart).eval) == 2:
                break
            await pilot.pause(0.05)
        await pilot.pause(0.3)
        surface = Color.parse(app.theme_variables["surface"]).rgb
        caption = chart.caption()  # the Rich text the caption shows
        drawn = {"category-caption": caption}
        for key, plot_id in (("4", "category-plot"), ("1", "loss-plot")):  # drawn where they show
            await pilot.press(key)
            await pilot.pause(0.3)
            drawn[plot_id] = app.query_one(f"#{plot_id}", SafePlot).render()
        for where, text in drawn.items():
            styles = [Style.parse(s.style) if isinstance(s.style, str) else s.style for s in text.spans]
            colours = {st.color for st in styles if st.color and st.color.name != "default"}
            assert colours, where  # the series are drawn, and in colour
            for c in colours:
                rgb = tuple(c.get_truecolor(app.ansi_theme))
                assert _contrast(rgb, surface) >= 2.5, (where, c.name, rgb, surface)


def test_a_bad_theme_name_is_refused_with_the_names(monkeypatch):
    from cockpit import themes
    from engine.errors import UserError

    monkeypatch.setenv("LEVIATHAN_THEME", "solarised")
    with pytest.raises(UserError) as e:
        themes.chosen()
    assert "LEVIATHAN_THEME=solarised" in str(e.value) and "textual-light" in str(e.value)


async def test_the_theme_picked_is_kept_for_the_next_start(tmp_path, monkeypatch):
    from cockpit import themes

    monkeypatch.delenv("LEVIATHAN_THEME", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    app = build_attach_app(_run(tmp_path))
    app.remember_theme = True
    async with app.run_test(size=(80, 24)) as pilot:
        assert app.theme == "textual-dark"
        app.theme = "textual-light"  # what the palette's "Theme" command does
        await pilot.pause(0.1)
    assert (tmp_path / "config" / "leviathan-cockpit" / "theme").read_text().strip() == "textual-light"
    again = build_attach_app(tmp_path / "logs" / "r")
    again.remember_theme = True
    async with again.run_test(size=(80, 24)):
        assert again.theme == "textual-light"
    monkeypatch.setenv("LEVIATHAN_THEME", "nord")  # the environment wins over the saved one
    assert themes.chosen() == "nord"


async def test_every_key_not_in_the_footer_is_in_the_help(tmp_path):
    """A binding of the app or one of its screens with show=False is named in ``?``."""
    from textual.binding import Binding

    from cockpit.habits import FilterBar
    from cockpit.widgets.confirm_quit import ConfirmQuit
    from cockpit.widgets.help_screen import KEYS, HelpScreen
    from cockpit.widgets.ship_menu import ShipMenu

    app = build_attach_app(_run(tmp_path))
    async with app.run_test(size=(120, 40)):
        hidden = [b for bs in app._bindings.key_to_bindings.values() for b in bs if not b.show]
        for screen in (HelpScreen, ConfirmQuit, ShipMenu, FilterBar):
            hidden += [b for b in Binding.make_bindings(screen.BINDINGS) if not b.show]
        words = {w for key, _ in KEYS for w in key.split()}  # the help's key column
        words |= {w.strip("()") for _, what in KEYS for w in what.split() if re.fullmatch(r"\(?F\d+", w)}
        missing = []
        for b in hidden:
            names = {b.key, b.key_display, app.get_key_display(b)} | (
                {b.key.upper()} if re.fullmatch(r"f\d+", b.key) else set()
            )
            if not names & words:
                missing.append(f"{b.key} ({b.action})")
        assert not missing, f"not in the footer nor in ?: {missing}"


async def _click_row(pilot, table: DataTable, row: int) -> None:
    """Click the middle of the first cell of ``row`` (rows are one line here; no scroll)."""
    inner = table.content_region
    y = inner.y - table.region.y + table.header_height + row
    await pilot.click(table, offset=(inner.x - table.region.x + 2, y))
    await pilot.pause()


async def test_the_mouse_clicks_tabs_checkpoints_and_checklist_items(tmp_path, prepared):
    from textual.widgets import TabbedContent

    from cockpit.checklist_pane import ChecklistPane
    from cockpit.widgets.checkpoints_table import CheckpointsTable

    app = build_attach_app(_with_data(tmp_path, prepared))
    async with app.run_test(size=(120, 40)) as pilot:
        tabs_ = app.query_one(TabbedContent)
        for tab in ("learned", "checklist", "dashboard"):
            await pilot.click(f"#--content-tab-{tab}")
            await pilot.pause()
            assert tabs_.active == tab
        table = app.query_one(CheckpointsTable)
        await _settle(pilot, app, "dashboard")
        older = table.coordinate_to_cell_key((1, 0)).row_key.value
        await _click_row(pilot, table, 1)  # a click takes the cursor there ...
        assert table.cursor_row == 1 and tabs_.active == "dashboard"
        await _click_row(pilot, table, 1)  # ... a click on the cursor's row is Enter: to the chat
        await pilot.pause()
        assert tabs_.active == "chat"
        # The hand-written checkpoint folders are empty: the chat names the one clicked, as Enter's would.
        assert str(app.query_one("#chat-status").render()).startswith(f"{older} is not a complete checkpoint")

        await pilot.click("#--content-tab-checklist")
        checklist = app.query_one("#checklist-table", DataTable)
        await _settle(pilot, app, "checklist")
        pane = app.query_one(ChecklistPane)
        for row in (2, 3):
            await _click_row(pilot, checklist, row)
            key = checklist.coordinate_to_cell_key((row, 0)).row_key.value
            assert checklist.cursor_row == row and pane.selected().id == key
            item = next(i for i in pane.items if i.id == key)
            assert item.title in str(app.query_one("#checklist-detail").render())


async def test_text_styled_by_ansi_name_reads_on_the_light_theme(tmp_path):
    """The panels style text "yellow", "green", ...: on textual-light each of the 16 ANSI colours
    is painted at 3:1 or more against the surface (Textual's own light palette has yellow at 2:1)."""
    from rich.color import Color as RichColor
    from textual.color import Color

    app = build_attach_app(_run(tmp_path))
    async with app.run_test(size=(80, 24)) as pilot:
        app.theme = "textual-light"
        await pilot.pause()
        surface = Color.parse(app.theme_variables["surface"]).rgb
        for n in range(1, 16):
            rgb = tuple(RichColor.from_ansi(n).get_truecolor(app.ansi_theme))
            assert _contrast(rgb, surface) >= 2.95, (n, rgb)
