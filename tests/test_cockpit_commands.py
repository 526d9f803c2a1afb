"""The real cockpit over a real trainer: `s` while paused saves at once (and says so), and a trainer
stopped with SIGSTOP shows as stalled with its age, then training again after SIGCONT."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from cockpit_script import text_of

from cockpit.launch import build_launched_app, stop_job
from engine.run.events import read_events
from tests.test_cockpit_real import events_of, steps_in, train_args
from tests.wait import wait_for

HEARTBEAT_S = 0.25  # stalled after 4 missed beats: 1 s


@pytest.mark.slow
@pytest.mark.anyio
async def test_save_while_paused_and_a_stopped_trainer_shows_as_stalled(
    tiny_model, write_config, tmp_path, monkeypatch
):
    monkeypatch.setenv("LEVIATHAN_HEARTBEAT_S", str(HEARTBEAT_S))  # the trainer and the cockpit both
    config = write_config(tiny_model("qwen3"), num_epochs=100, max_steps=400)
    log = tmp_path / "logs" / "test" / "events.jsonl"
    app = build_launched_app(train_args(config))
    notes: list[str] = []
    app.notify = lambda message, **kw: notes.append(message)  # what the operator is told
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(lambda: len(steps_in(events_of(log))) >= 2, 180, pilot=pilot)

            await pilot.press("p")
            await wait_for(lambda: "paused at step" in app.sub_title, 60, pilot=pilot)
            at = app.state.step
            # Paused is not stalled: the paused trainer's heartbeat keeps coming.
            await pilot.pause(6 * HEARTBEAT_S)
            assert "stalled" not in app.sub_title and "paused at step" in app.sub_title
            await pilot.press("s")
            assert notes[-1] == f"saving a checkpoint now, at step {at} (the run stays paused)"
            save = await wait_for(
                lambda: next((r for r in events_of(log) if r["kind"] == "save"), None), 60, pilot=pilot
            )
            assert save["step"] == at and (Path(save["path"]) / "leviathan.json").exists()
            assert steps_in(events_of(log))[-1] == at and app.state.paused  # still paused, no step since
            await wait_for(lambda: app.state.saved_step == at, 10, pilot=pilot)
            await pilot.press("s")  # again, at the same step: says why not, sends nothing
            assert notes[-1] == f"checkpoint-{at} is saved already (paused at that step)"
            await pilot.press("p")
            await wait_for(lambda: steps_in(events_of(log))[-1] >= at + 2, 60, pilot=pilot)

            os.kill(app.source.job.pid, signal.SIGSTOP)
            try:
                await wait_for(lambda: "stalled" in app.sub_title, 30, pilot=pilot)
                assert "no record or heartbeat for" in app.sub_title, app.sub_title
                frozen = steps_in(events_of(log))[-1]
                assert f"stalled at step {frozen}" in app.sub_title
                await wait_for(
                    lambda: "stalled" in text_of(app.query_one("#progress").content), 5, pilot=pilot
                )
                assert "ETA —" in text_of(
                    app.query_one("#progress").content, width=200
                )  # none from a frozen speed
            finally:
                os.kill(app.source.job.pid, signal.SIGCONT)
            await wait_for(lambda: "stalled" not in app.sub_title, 30, pilot=pilot)
            await wait_for(lambda: steps_in(events_of(log))[-1] > frozen, 60, pilot=pilot)
            assert "training" in app.sub_title
    finally:
        code = stop_job(app)
    assert code == 0
    records = read_events(log).records
    assert records[-1]["kind"] == "end" and records[-1]["status"] == "stopped"
    assert [r["kind"] for r in records].count("paused") == 1


def test_the_header_says_probing_while_a_save_s_probes_run():
    """Issue 33: during probes the header said "training" with no speed; it says the suite, how
    far it is and the time left, until the suite's record or the next step."""
    from cockpit.run_state import RunState

    state = RunState(read_only=False)
    state.observe([{"kind": "start", "step": 0}, {"kind": "step", "step": 20}, {"kind": "save", "step": 20}])
    assert state.label() == "training"
    state.observe([{"kind": "probing", "step": 20, "suite": "identity", "i": 0, "n": 5}])
    assert state.label() == "probing identity on step 20: 0/5"
    state.observe([{"kind": "probing", "step": 20, "suite": "identity", "i": 3, "n": 5, "seconds_left": 4.2}])
    assert state.label() == "probing identity on step 20: 3/5, ~4s left"
    state.pause_requested()
    assert state.label().endswith("· pausing: cutting the probes short")
    state.observe([{"kind": "probe", "step": 20, "suite": "identity", "cut": "pause"}])
    assert state.label() == "pausing at step 20"  # the engine holds at the step just saved
    state.observe([{"kind": "paused", "step": 20}])
    assert state.label() == "paused at step 20"
    state.observe(
        [
            {"kind": "resumed", "step": 20},
            {"kind": "probing", "step": 40, "suite": "inference", "i": 1, "n": 8},
        ]
    )
    state.observe([{"kind": "step", "step": 41}])
    assert state.label() == "training"  # a step: the probes are over
    state.observe([{"kind": "probing", "step": 60, "suite": "identity", "i": 1, "n": 5}])
    state.stop_requested()  # the engine cuts the probes and ends on checkpoint-60 (no second save)
    assert state.label() == "stopping: cutting the probes short, ending on the checkpoint of step 60"
    state.observe([{"kind": "probe", "step": 60, "suite": "identity", "cut": "stop"}])
    assert state.label() == "stopping: ending on the checkpoint of step 60"  # no second save
    state.observe([{"kind": "end", "step": 60, "status": "stopped"}])
    assert state.label() == "stopped at step 60"
    later = RunState(read_only=False)  # a stop asked with no probes running: the save comes next
    later.observe([{"kind": "start", "step": 0}, {"kind": "step", "step": 5}])
    later.stop_requested()
    assert later.label() == "stopping: saving a checkpoint at the next step"


def test_run_state_is_where_keys_ask():
    """What the keys offer and what the header says, from the records and the requests alone."""
    from cockpit.run_state import RunState

    state = RunState(read_only=False)
    state.observe([{"kind": "start", "step": 0}, {"kind": "step", "step": 3}])
    assert state.offers("pause", True) and not state.offers("resume", True)
    state.pause_requested()
    assert state.label() == "training · pausing at the next step" and state.offers("resume", True)
    assert not state.paused_now  # a save asked now waits for the step boundary
    state.observe([{"kind": "step", "step": 4}, {"kind": "paused", "step": 4}])
    assert state.label() == "paused at step 4" and state.paused_now and state.asked is None
    state.observe([{"kind": "save", "step": 4, "path": "out/checkpoint-4"}])
    assert state.saved_step == 4
    state.resume_requested()
    assert state.label() == "paused at step 4 · resuming" and state.offers("pause", True)
    assert state.heartbeat(50.0, 20.0) and state.label().startswith(
        "stalled at step 4: no record or heartbeat for 50 s"
    )
    assert state.heartbeat(1.0, 20.0) and state.label() == "paused at step 4 · resuming"
    state.observe([{"kind": "resumed", "step": 4}])
    assert state.label() == "training" and not state.paused
    state.stop_requested()
    assert state.offers("save", True) is None and state.offers("evaluate", False) is None
    assert state.heartbeat(500.0, 20.0) and state.stalled_s == 500  # a stop that never comes shows too
