"""``attach``: a run log on disk, finished or growing; bad folders and bad lines."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cockpit_script import fields, last_t, run_records, text_of
from conftest import cli

from cockpit.launch import build_attach_app, find_run_log
from cockpit.source import run_is_live
from cockpit.widgets.checkpoints_table import CheckpointsTable
from cockpit.widgets.health_panel import HealthPanel
from cockpit.widgets.loss_chart import LossChart
from engine.errors import UserError
from tests.wait import wait_for

pytestmark = pytest.mark.anyio
SIZE = (120, 40)


def write_log(run_dir: Path, records: list, *, end: bool = True) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    if end:
        lines.append(
            json.dumps({"t": last_t(records) + 1, "kind": "end", "step": 300, "status": "completed"})
        )
    (run_dir / "events.jsonl").write_text("\n".join(lines) + "\n")
    return run_dir


# -- bad targets ---------------------------------------------------------------------------


def test_missing_folder_and_folder_without_a_log(tmp_path):
    with pytest.raises(UserError, match="no such file or folder"):
        find_run_log(tmp_path / "nope")
    logs = tmp_path / "logs"
    write_log(logs / "demo", run_records(steps=3))
    with pytest.raises(UserError, match="no run log") as e:
        find_run_log(logs)
    assert "did you mean" in e.value.fix and str(logs / "demo") in e.value.fix
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no run log") as e:
        find_run_log(tmp_path / "empty")
    assert "logs" in e.value.fix


def test_a_foreign_file_is_refused_an_empty_log_is_not(tmp_path):
    foreign = tmp_path / "notes.txt"
    foreign.write_text("hello\nworld\n")
    with pytest.raises(UserError, match="not a run log"):
        find_run_log(foreign)
    binary = tmp_path / "adapter_model.safetensors"
    binary.write_bytes(os.urandom(4096) + b"\n")
    with pytest.raises(UserError, match="not a run log"):
        find_run_log(binary)
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "events.jsonl").write_text("")  # a run that is just starting
    assert find_run_log(tmp_path / "new") == tmp_path / "new" / "events.jsonl"


def test_attach_cli_exits_2_with_the_message(tmp_path):
    r = cli("attach", tmp_path / "missing", cwd=tmp_path)
    assert r.returncode == 2
    assert "no such file or folder" in r.stderr and "fix:" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_without_a_terminal_the_cockpit_points_to_headless(tmp_path):
    run_dir = write_log(tmp_path / "run", run_records(steps=3))
    r = cli("attach", run_dir, cwd=tmp_path)  # stdin/stderr are pipes here
    assert r.returncode == 2 and "needs a terminal" in r.stderr and "--headless" in r.stderr
    r = cli("train", "--max-steps", "1", cwd=tmp_path)
    assert r.returncode == 2 and "needs a terminal" in r.stderr
    assert not (tmp_path / "logs").exists()  # nothing started


# -- finished and live logs ----------------------------------------------------------------


async def test_a_finished_run_shows_in_full_read_only(tmp_path):
    records = run_records()
    run_dir = write_log(tmp_path / "logs" / "demo", records)
    app = build_attach_app(run_dir, clock=lambda: last_t(records) + 600)
    async with app.run_test(size=SIZE) as pilot:
        chart = app.query_one(LossChart)
        await wait_for(lambda: len(chart.train) == 300 and app.ended, pilot=pilot)
        await wait_for(lambda: "completed at step 300" in app.sub_title, pilot=pilot)
        assert app.source.read_only and "read-only" in app.sub_title
        assert "completed at step 300" in app.sub_title  # the header says how the run ended
        await wait_for(lambda: "completed" in fields(app) and "ETA —" in fields(app), pilot=pilot)
        assert app.query_one(CheckpointsTable).row_count == 3
        for action in ("pause", "save", "evaluate"):
            assert app.check_action(action, ()) is False  # not offered in attach mode
        from cockpit.checklist_pane import ChecklistPane

        assert isinstance(app.pane_widgets["checklist"], ChecklistPane)
        assert app.pane_widgets["checklist"].run_dir == run_dir
        await pilot.press("p", "s", "e", "q")  # no controls; q quits without asking
        await wait_for(lambda: not app.is_running, pilot=pilot)


async def test_torn_and_foreign_lines_are_skipped_and_counted(tmp_path):
    records = run_records(steps=40)
    bad = [
        '{"t": 1, "kind": "step", "st',  # torn by a kill, then ended by the next writer
        '{"hello": "world"}',  # JSON, but not a record
        "garbage",
    ]
    mixed = records[:10] + bad[:1] + records[10:20] + bad[1:] + records[20:]
    run_dir = write_log(tmp_path / "run", mixed)
    app = build_attach_app(run_dir / "events.jsonl", clock=lambda: 0.0)
    async with app.run_test(size=SIZE) as pilot:
        chart = app.query_one(LossChart)
        await wait_for(lambda: len(chart.train) == 40 and app.ended, pilot=pilot)
        health = app.query_one(HealthPanel)
        await wait_for(lambda: health.skipped == 3, pilot=pilot)
        assert app.source.bad_lines == 3
        assert "3 torn or foreign line(s)" in text_of(app.query_one("#health-list").content)


async def test_a_growing_log_is_tailed_live(tmp_path):
    records = run_records(steps=50)
    run_dir = write_log(tmp_path / "run", records[:20], end=False)
    (run_dir / ".lock").write_text(str(os.getpid()))  # the "trainer" is this process
    app = build_attach_app(run_dir, clock=lambda: last_t(records))
    app.source.poll_s = 0.05
    async with app.run_test(size=SIZE) as pilot:
        chart = app.query_one(LossChart)
        await wait_for(lambda: len(chart.train) > 0, pilot=pilot)
        n = len(chart.train)
        with open(run_dir / "events.jsonl", "a") as f:
            for r in records[20:40]:
                f.write(json.dumps(r) + "\n")
            f.flush()
            await wait_for(lambda: len(chart.train) > n, pilot=pilot)
            line = json.dumps(records[40])
            f.write(line[:15])  # a line still being written is held back...
            f.flush()
            await pilot.pause(0.5)
            steps = len(chart.train)
            f.write(line[15:] + "\n")  # ...until its newline arrives
            f.flush()
            await wait_for(lambda: len(chart.train) == steps + (records[40]["kind"] == "step"), pilot=pilot)
        assert app.source.bad_lines == 0
        await wait_for(lambda: "running" in fields(app), pilot=pilot)


async def test_a_killed_run_says_so(tmp_path):
    records = run_records(steps=30)
    run_dir = write_log(tmp_path / "run", records, end=False)
    (run_dir / ".lock").write_text("999999999")  # no such process
    assert not run_is_live(run_dir)
    app = build_attach_app(run_dir, clock=lambda: last_t(records))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(lambda: "not running" in fields(app), pilot=pilot)
        await wait_for(lambda: "killed?" in fields(app) and "ETA —" in fields(app), pilot=pilot)


@pytest.mark.slow  # replays 60k records through the dashboard (about 10 s on a quiet core)
async def test_a_long_finished_log_says_loading_never_killed(tmp_path):
    """Attaching reads a long log for seconds before its end record: "loading", not "killed?"."""
    run_dir = tmp_path / "long"
    run_dir.mkdir()
    n = 60_000
    with open(run_dir / "events.jsonl", "w") as f:
        f.write(json.dumps({"t": 1.0, "kind": "start", "step": 0, "max_steps": n}) + "\n")
        for s in range(1, n + 1):
            f.write(json.dumps({"t": 1.0 + s, "kind": "step", "step": s, "loss": 2.0, "max_steps": n}) + "\n")
        f.write(json.dumps({"t": 2.0 + n, "kind": "end", "step": n, "status": "completed"}) + "\n")
    assert not run_is_live(run_dir)
    app = build_attach_app(run_dir, clock=lambda: 3.0 + n)
    seen: list[str] = []
    async with app.run_test(size=SIZE) as pilot:
        while not app.ended:
            seen.append(app.sub_title + " | " + fields(app))
            await pilot.pause(0.05)
        await wait_for(lambda: f"completed at step {n:,}" in app.sub_title, pilot=pilot)
    assert any("loading the run log" in s for s in seen), seen[:3]
    assert not any("killed?" in s or "no end record" in s for s in seen), [
        s for s in seen if "killed?" in s or "no end record" in s
    ][:3]
