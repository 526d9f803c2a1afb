"""Snapshots of the cockpit at 120x40 and 80x24 (pytest-textual-snapshot).

Deterministic: a scripted run with fixed times, the app's clock pinned, no local GPU
sampling. Update after a deliberate change with ``pytest tests/test_cockpit_snapshots.py
--snapshot-update`` and look at the report before committing.
"""

from __future__ import annotations

import asyncio

import pytest
from cockpit_script import last_t, run_records

from cockpit.app import CockpitApp
from cockpit.source import ScriptedSource
from cockpit.widgets.loss_chart import LossChart
from engine.control import Controls

WIDE, NARROW = (120, 40), (80, 24)


def scripted_app(*, controls: bool = True, train=None) -> CockpitApp:
    records = run_records()
    source = ScriptedSource(
        records, controls=Controls() if controls else None, train=train, run_name="scripted"
    )
    t = last_t(records) + 60
    return CockpitApp(source, clock=lambda: t)


async def loaded(pilot) -> None:
    """Wait until every record is on screen and the chart has drawn them."""
    chart = pilot.app.query_one(LossChart)
    for _ in range(100):
        if len(chart.train) == 300:
            break
        await pilot.pause(0.05)
    await pilot.pause(0.6)  # past one refresh of every panel
    chart.redraw()
    await pilot.pause(0.1)


def stand_in_trainer(source):
    source.controls.stop.wait(30)  # ended by the app closing after the snapshot

    class Done:
        status = "stopped"

    return Done()


@pytest.mark.parametrize("size", [WIDE, NARROW], ids=["120x40", "80x24"])
def test_dashboard(snap_compare, size):
    assert snap_compare(scripted_app(), terminal_size=size, run_before=loaded)


@pytest.mark.parametrize("size", [WIDE, NARROW], ids=["120x40", "80x24"])
def test_attached_read_only(snap_compare, size):
    assert snap_compare(scripted_app(controls=False), terminal_size=size, run_before=loaded)


@pytest.mark.parametrize("size", [WIDE, NARROW], ids=["120x40", "80x24"])
def test_chart_zoomed_log_unsmoothed(snap_compare, size):
    async def run_before(pilot):
        await loaded(pilot)
        await pilot.press("m", "l", "z", "z")
        await loaded(pilot)

    assert snap_compare(scripted_app(), terminal_size=size, run_before=run_before)


def test_help(snap_compare):
    async def run_before(pilot):
        await loaded(pilot)
        await pilot.press("question_mark")
        await pilot.pause(0.2)

    assert snap_compare(scripted_app(), terminal_size=NARROW, run_before=run_before)


def test_confirm_quit(snap_compare):
    async def run_before(pilot):
        await loaded(pilot)
        while not (pilot.app.training and pilot.app.training.is_alive()):
            await asyncio.sleep(0.05)
        await pilot.press("q")
        await pilot.pause(0.2)

    assert snap_compare(scripted_app(train=stand_in_trainer), terminal_size=WIDE, run_before=run_before)
