"""Tabs 4 Learned and 5 Data in the attached cockpit, and the keys users expect (palette, j/k, /),
on a run folder written by hand in the run log's and the probes' formats."""

from __future__ import annotations

import json

import pytest

from cockpit.launch import build_attach_app
from tests.wait import wait_for

pytestmark = pytest.mark.anyio


def _run(tmp_path):
    run_dir = tmp_path / "logs" / "r"
    (run_dir / "eval").mkdir(parents=True)
    ckpts = {s: tmp_path / "out" / f"checkpoint-{s}" for s in (25, 50)}
    for p in ckpts.values():
        p.mkdir(parents=True)
    answers = {25: ["I am a a a", "abyss"], 50: ["I am Leviathan, the Abyssal Mind", "abyss"]}
    records = [{"t": 1.0, "kind": "start", "step": 0}]
    for i, (step, cats) in enumerate(
        ((25, {"coding": 2.0, "identity": 3.0}), (50, {"coding": 2.2, "identity": 1.0}))
    ):
        records.append(
            {"t": 2.0 + i, "kind": "eval", "step": step, "eval_loss": 2.0 - i, "by_category": cats}
        )
        records.append({"t": 2.5 + i, "kind": "save", "step": step, "path": str(ckpts[step])})
        items = [
            {
                "id": f"q{j}",
                "category": "identity",
                "prompt": f"Who {j}?",
                "answer": a,
                "passed": "Leviathan" in a,
            }
            for j, a in enumerate(answers[step])
        ]
        result = run_dir / "eval" / f"identity-checkpoint-{step}.json"
        data = {"probe": True, "step": step, "suite": "identity", "adapter": str(ckpts[step]), "items": items}
        result.write_text(json.dumps({**data, "passed": sum(i["passed"] for i in items), "total": 2}))
        records.append(
            {"t": 2.6 + i, "kind": "probe", "step": step, "suite": "identity", "result": str(result)}
        )
    (run_dir / "events.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run_dir / "config.yaml").write_text("run_name: r\n")
    return run_dir


async def test_learned_tab_shows_answers_by_checkpoint_and_category_curves(tmp_path):
    from cockpit.widgets.category_chart import CategoryChart
    from cockpit.widgets.learned_table import ProbeAnswers

    app = build_attach_app(_run(tmp_path))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("4")
        table = app.query_one(ProbeAnswers)
        for _ in range(50):
            if table.row_count == 2 and len(app.query_one(CategoryChart).points) == 2:
                break
            await pilot.pause(0.05)
        assert [c.label.plain for c in table.columns.values()] == ["prompt", "step 25 0/2", "step 50 1/2"]
        cell = table.get_row("identity/q0")[2]
        assert "✓" in cell.plain and "Leviathan," in cell.plain
        underlined = [cell.plain[s.start : s.end] for s in cell.spans if "underline" in str(s.style)]
        assert underlined == ["Leviathan,", "the", "Abyssal", "Mind"]  # "I am" was there at step 25

        def caption() -> str:  # redrawn on the chart's timer, after the points arrive
            return str(app.query_one("#category-caption").render())

        # the one getting worse comes first
        await wait_for(lambda: caption().startswith("━ coding 2.200 (+0.200)"), pilot=pilot)
        assert app.focused is table
        await pilot.press("j")
        assert table.cursor_row == 1
        await pilot.press("k")
        assert table.cursor_row == 0
        await pilot.press("slash")
        for ch in "who 1":
            await pilot.press("space" if ch == " " else ch)
        await pilot.press("enter")
        assert table.row_count == 1 and table.filter == "who 1"


async def test_the_palette_offers_every_key_by_name(tmp_path):
    app = build_attach_app(_run(tmp_path))
    async with app.run_test(size=(120, 40)):
        names = {c.title for c in app.get_system_commands(app.screen)}
        assert {"Help", "Smooth", "Log", "Zoom", "Quit", "Dashboard", "Learned", "Data", "Theme"} <= names
        assert "Pause" not in names  # attached read-only: not offered, as in the footer


async def test_slash_filters_the_checkpoint_table_and_its_ages_keep_updating(tmp_path):
    from cockpit.widgets.checkpoints_table import CheckpointsTable

    app = build_attach_app(_run(tmp_path))
    async with app.run_test(size=(120, 40)) as pilot:
        table = app.query_one(CheckpointsTable)
        for _ in range(50):
            if table.row_count == 2:
                break
            await pilot.pause(0.05)
        assert app.focused is table
        await pilot.press("slash", "t", "minus", "5", "0", "enter")
        assert table.row_count == 1 and str(table.get_row_at(0)[0]) == "50"
        table.refresh_ages()  # the hidden row is not updated (it is not in the table)
        await pilot.press("slash", "escape")
        assert table.row_count == 2
