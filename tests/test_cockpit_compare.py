"""Runs side by side (the Compare tab, ``attach A B``) and the journey (the Journey tab), through
the real panes on run folders written by hand in the run log's format."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from conftest import cli

from cockpit.cli import parser
from cockpit.launch import build_attach_app
from cockpit.widgets.compare_pane import ComparePane
from cockpit.widgets.journey_pane import JourneyPane, JourneyTable
from engine.evaluate import checklist
from tests.wait import wait_for

pytestmark = pytest.mark.anyio
SIZE = (120, 40)


def _write_run(run_dir, steps, steps_per_epoch, *, lr, t0=1000.0, eval_every=10, end=True):
    """A run folder: config.yaml and a run log whose loss falls with the epoch, plus some noise."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "base_model": "m",
        "datasets": [{"path": "d.jsonl"}],
        "learning_rate": lr,
        "run_name": run_dir.name,
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    lines = [{"t": t0, "kind": "start", "step": 0}]
    for s in range(1, steps + 1):
        epoch = round(s / steps_per_epoch, 6)
        loss = round(2.5 * math.exp(-epoch) + (s % 7) * 0.01, 5)
        lines.append(
            {"t": t0 + s, "kind": "step", "step": s, "loss": loss, "epoch": epoch, "tokens": s * 512}
        )
        if s % eval_every == 0:
            lines.append({"t": t0 + s, "kind": "eval", "step": s, "eval_loss": loss + 0.1})
    if end:
        lines.append({"t": t0 + steps + 1, "kind": "end", "step": steps, "status": "completed"})
    (run_dir / "events.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return run_dir


def _from_log(run_dir):
    """(epoch -> loss) of the steps and (epoch at each eval -> eval loss), read with json alone."""
    recs = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    epoch_of = {r["step"]: r["epoch"] for r in recs if r["kind"] == "step"}
    steps = [(r["epoch"], r["loss"]) for r in recs if r["kind"] == "step"]
    evals = [(epoch_of[r["step"]], r["eval_loss"]) for r in recs if r["kind"] == "eval"]
    return steps, evals


async def test_two_runs_overlaid_by_epoch_match_their_logs(tmp_path):
    ten = _write_run(tmp_path / "logs" / "ten", 120, 40, lr=2e-4)  # 3 epochs of 40 steps
    full = _write_run(tmp_path / "logs" / "full", 600, 200, lr=1e-4)  # 3 epochs of 200 steps
    app = build_attach_app(ten, full)
    async with app.run_test(size=SIZE) as pilot:
        pane = app.query_one(ComparePane)
        await wait_for(lambda: all(r.loaded for r in pane.runs), 10, "both runs loaded", pilot=pilot)
        assert app.query_one("TabbedContent").active == "compare"  # attach A B opens on the overlay
        assert pane.axis == "epoch"
        for run, folder in zip(pane.runs, (ten, full), strict=True):
            steps, evals = _from_log(folder)
            (x, y), (ex, ey), _ = pane.series(run, columns=1000)  # wide enough to keep every point
            assert list(zip(x, y, strict=True)) == steps
            assert [(round(a, 6), b) for a, b in zip(ex, ey, strict=True)] == evals
        # Aligned by epoch: both runs end at epoch 3, though one has five times the steps.
        assert pane.runs[0].curves.epoch[-1] == pane.runs[1].curves.epoch[-1] == 3.0
        # The configs' difference, without run-own keys (run_name differs too).
        diff = pane.query_one("#compare-diff")
        keys = [str(diff.get_row_at(i)[0]) for i in range(diff.row_count)]
        assert keys == ["learning_rate"]
        # x cycles the axis; on tokens the points are the logs' tokens.
        await pilot.press("x")
        assert pane.axis == "tokens"
        (x, _), _, _ = pane.series(pane.runs[1], columns=1000)
        assert x == [s * 512 for s in range(1, 601)]
        await pilot.press("x", "x")
        assert pane.axis == "step"
        caption = str(pane.query_one("#compare-caption").render())
        assert "ten: step 120" in caption and "full: step 600" in caption and "guide" in caption


async def test_a_growing_log_is_followed_from_where_it_was_read(tmp_path):
    ten = _write_run(tmp_path / "logs" / "ten", 50, 25, lr=2e-4)
    live = _write_run(tmp_path / "logs" / "live", 30, 25, lr=1e-4, end=False)
    app = build_attach_app(ten, live)
    async with app.run_test(size=SIZE) as pilot:
        pane = app.query_one(ComparePane)
        await wait_for(lambda: all(r.loaded for r in pane.runs), 10, "both runs loaded", pilot=pilot)
        reader = pane.runs[1].reader
        offset = reader.offset
        assert offset == (live / "events.jsonl").stat().st_size
        with open(live / "events.jsonl", "a") as f:
            f.write(json.dumps({"t": 2000.0, "kind": "step", "step": 31, "loss": 0.5, "epoch": 1.24}) + "\n")
            f.write('{"t": 2001.0, "kind": "step", "st')  # a line being written: left for later
        await wait_for(lambda: len(reader.curves.step) == 31, 10, "the new step", pilot=pilot)
        assert reader.curves.loss[-1] == 0.5 and reader.pending.startswith(b'{"t": 2001.0')


async def test_a_run_is_added_by_folder_and_a_wrong_folder_is_named(tmp_path):
    ten = _write_run(tmp_path / "logs" / "ten", 40, 20, lr=2e-4)
    other = _write_run(tmp_path / "logs" / "other", 80, 20, lr=3e-4)
    app = build_attach_app(ten)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("a")
        box = app.screen.query_one("#add-run-path")
        box.value = str(tmp_path / "nope")
        await pilot.press("enter")
        assert "no such file or folder" in str(app.screen.query_one("#add-run-error").render())
        box.value = str(other)
        await pilot.press("enter")
        pane = app.query_one(ComparePane)
        await wait_for(lambda: len(pane.runs) == 2 and pane.runs[1].loaded, 10, "added", pilot=pilot)
        assert app.query_one("TabbedContent").active == "compare"


def test_attach_takes_several_runs_and_names_each_missing_one(tmp_path):
    a = _write_run(tmp_path / "a", 5, 5, lr=1e-4)
    b = _write_run(tmp_path / "b", 5, 5, lr=2e-4)
    assert parser().parse_args(["attach", str(a), str(b)]).run_dir == [str(a), str(b)]
    r = cli("attach", a, tmp_path / "gone1", tmp_path / "gone2", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "gone1: no such file" in r.stderr and "gone2: no such file" in r.stderr


# -- the journey ---------------------------------------------------------------------------


def _offered(app, action: str) -> bool:
    return any(b.binding.action == action and b.enabled for b in app.active_bindings.values())


def _states(pane) -> dict[str, str]:
    return {s.id: s.state for s in pane.journey.steps}


def _ten_and_gated_config(tmp_path):
    ten = _write_run(tmp_path / "logs" / "ten", 60, 30, lr=2e-4)
    (tmp_path / "d.jsonl").write_text('{"text": "x"}\n')
    configs = tmp_path / "configs"
    configs.mkdir()
    full_yaml = {
        "base_model": "m",
        "datasets": [{"path": "d.jsonl"}],
        "run_name": "full",
        "logs_dir": "logs",
        "gate": {"run": "logs/ten", "checks": ["no_oom", "identity_responds"]},
    }
    (configs / "full.yaml").write_text(yaml.safe_dump(full_yaml))
    return ten


async def test_the_journey_follows_a_ten_percent_run_whose_gate_fails_then_passes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ten = _ten_and_gated_config(tmp_path)
    app = build_attach_app(ten)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("7")
        pane = app.query_one(JourneyPane)
        await wait_for(lambda: pane.journey is not None, 20, "the journey measured", pilot=pilot)
        states = _states(pane)
        assert states["sample"] == "done" and states["ten"] == "done"
        assert states["gate"] == "failed" and states["full"] == "todo"
        gate = pane.journey.step("gate")
        assert "identity_responds" in gate.detail and "no_oom" not in gate.detail
        assert "leviathan-cockpit checklist" in gate.next or "eval" in gate.next
        assert not pane.journey.can_start_full
        assert not _offered(app, "start_full")

        checklist.tick(ten, "identity_responds", note="asked it by hand")
        first = pane.journey
        app.query_one(JourneyTable).focus()
        await pilot.press("r")
        await wait_for(lambda: pane.journey is not first, 20, "re-measured", pilot=pilot)
        assert _states(pane)["gate"] == "done"
        assert pane.journey.can_start_full and pane.journey.full_config == Path("configs/full.yaml")
        assert pane.journey.step("full").next.startswith("F")
        assert [s.state for s in pane.journey.steps[4:]] == ["todo"] * 4  # nothing merged yet
        assert _offered(app, "start_full")


@pytest.mark.slow
async def test_from_a_passed_gate_F_starts_the_gated_config_headless(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ten = _ten_and_gated_config(tmp_path)
    checklist.tick(ten, "identity_responds", note="asked it by hand")
    app = build_attach_app(ten)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("7")
        pane = app.query_one(JourneyPane)
        await wait_for(lambda: pane.journey is not None and pane.journey.can_start_full, 20, pilot=pilot)
        await pilot.press("F")
        assert pane.started is not None
        started = pane.started
        await wait_for(lambda: started.poll() is not None, 120, "the train process", pilot=pilot)
        pane.measure()  # the refusal is told, and F is offered again
        await wait_for(lambda: pane.started is None, 20, "the failed start noticed", pilot=pilot)
        assert _offered(app, "start_full")
    # The base model "m" does not exist: the real `train --headless` refuses it (exit 2) and says so
    # in the output kept beside the run folder: the key ran that command on that config.
    assert started.returncode == 2
    out = (tmp_path / "logs" / "full.headless.log").read_text()
    assert "configs/full.yaml: base_model `m` is not a local folder" in out, out


def test_a_run_log_without_an_end_whose_trainer_is_gone_is_stopped_not_running(tmp_path):
    from engine.evaluate.journey import run_status

    live = _write_run(tmp_path / "live", 40_000 // 100, 100, lr=1e-4, end=False)
    state, detail = run_status(live)
    assert state == "stopped" and "at step 400" in detail and "killed" in detail
    assert run_status(_write_run(tmp_path / "done", 5, 5, lr=1e-4))[0] == "done"
    assert run_status(tmp_path / "none")[0] == "todo"
