"""Snapshots of the cockpit at 120x40 and 80x24 (pytest-textual-snapshot).

Deterministic: a scripted run with fixed times, the app's clock pinned, no local GPU
sampling. Update after a deliberate change with ``pytest tests/test_cockpit_snapshots.py
--snapshot-update`` and look at the report before committing.
"""

from __future__ import annotations

import pytest
from cockpit_script import attached_app, launched_app, run_records

from cockpit.app import CockpitApp
from cockpit.widgets.loss_chart import LossChart

WIDE, NARROW = (120, 40), (80, 24)


@pytest.fixture
def scripted_app(tmp_path):
    """The cockpit over a scripted job (controls=False: attached read-only to the same log)."""

    def make(*, controls: bool = True, **job_kw) -> CockpitApp:
        if not controls:
            return attached_app(tmp_path / "run", run_records(), live=True)
        return launched_app(tmp_path / "run", run_records(), **job_kw)

    return make


async def loaded(pilot) -> None:
    """Wait until every record is on screen and the chart has drawn them."""
    chart = pilot.app.query_one(LossChart)
    for _ in range(200):
        if len(chart.train) == 300 and any(w in pilot.app.sub_title for w in ("training", "running")):
            break
        await pilot.pause(0.05)
    await pilot.pause(0.6)  # past one refresh of every panel
    chart.redraw()
    await pilot.pause(0.1)


@pytest.mark.parametrize("size", [WIDE, NARROW], ids=["120x40", "80x24"])
def test_dashboard(snap_compare, scripted_app, size):
    assert snap_compare(scripted_app(), terminal_size=size, run_before=loaded)


@pytest.mark.parametrize("size", [WIDE, NARROW], ids=["120x40", "80x24"])
def test_attached_read_only(snap_compare, scripted_app, size):
    assert snap_compare(scripted_app(controls=False), terminal_size=size, run_before=loaded)


@pytest.mark.parametrize("size", [WIDE, NARROW], ids=["120x40", "80x24"])
def test_chart_zoomed_log_unsmoothed(snap_compare, scripted_app, size):
    async def run_before(pilot):
        await loaded(pilot)
        await pilot.press("m", "l", "z", "z")
        await loaded(pilot)

    assert snap_compare(scripted_app(), terminal_size=size, run_before=run_before)


def test_help(snap_compare, scripted_app):
    async def run_before(pilot):
        await loaded(pilot)
        await pilot.press("question_mark")
        await pilot.pause(0.2)

    assert snap_compare(scripted_app(), terminal_size=NARROW, run_before=run_before)


def test_confirm_quit(snap_compare, scripted_app):
    async def run_before(pilot):
        await loaded(pilot)
        await pilot.press("q")
        await pilot.pause(0.2)

    assert snap_compare(scripted_app(), terminal_size=WIDE, run_before=run_before)


@pytest.mark.parametrize("size", [WIDE, NARROW], ids=["120x40", "80x24"])
def test_dashboard_light(snap_compare, scripted_app, size, monkeypatch, tmp_path):
    """The light theme as a user picks it (``LEVIATHAN_THEME``): the charts' darker colours."""
    monkeypatch.setenv("LEVIATHAN_THEME", "textual-light")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    app = scripted_app()
    app.remember_theme = True
    assert snap_compare(app, terminal_size=size, run_before=loaded)
