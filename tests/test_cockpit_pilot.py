"""The cockpit over a scripted job (a child process that writes a run log and reads the control
file, as a launched trainer does): every panel and every key, with Pilot."""

from __future__ import annotations

import json

import pytest
from cockpit_script import (
    append_records,
    attached_app,
    fields,
    launched_app,
    run_records,
    text_of,
)

from cockpit.app import CockpitApp
from cockpit.messages import (
    CheckpointSaved,
    ControlRequested,
    GpuSampled,
    LinesSkipped,
    StepsLogged,
    to_messages,
)
from cockpit.widgets.checkpoints_table import CheckpointsTable
from cockpit.widgets.confirm_quit import ConfirmQuit
from cockpit.widgets.gpu_panel import GpuPanel
from cockpit.widgets.health_panel import HealthPanel
from cockpit.widgets.help_screen import HelpScreen
from cockpit.widgets.loss_chart import ZOOMS, LossChart
from cockpit.widgets.pane_placeholder import PanePlaceholder
from cockpit.widgets.progress_panel import ProgressPanel
from tests.wait import wait_for

SIZE = (120, 40)
pytestmark = pytest.mark.anyio


@pytest.fixture
def make_app(tmp_path):
    """make_app(records=None, *, controls=True, ...): the cockpit over a scripted job of its
    own (controls=False: attached read-only to the same records on disk)."""

    def make(records=None, *, controls=True, can_eval=True, clock_t=None, **job_kw) -> CockpitApp:
        records = run_records() if records is None else records
        if not controls:
            return attached_app(tmp_path / "run", records, clock_t=clock_t)
        config = {"val_set_size": 0.1} if can_eval else {}
        return launched_app(tmp_path / "run", records, clock_t=clock_t, config=config, **job_kw)

    return make


def end_record(job) -> dict:
    lines = (job.run_dir / "events.jsonl").read_text().splitlines()
    return next(r for r in map(json.loads, reversed(lines)) if r["kind"] == "end")


# -- panels --------------------------------------------------------------------------------


async def test_every_panel_shows_the_scripted_run(make_app):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        chart = app.query_one(LossChart)
        await wait_for(lambda: len(chart.train) == 300, pilot=pilot)
        await wait_for(lambda: len(chart.eval) == 3, pilot=pilot)
        assert chart.steps_per_epoch == pytest.approx(200)

        # the caption is redrawn on the chart's next refresh, after the points arrive
        def drawn() -> str | None:
            c = text_of(app.query_one("#loss-caption").content)
            return c if "guide" in c else None

        caption = await wait_for(drawn, pilot=pilot)
        assert "guide" in caption and "eval" in caption and "whole run" in caption

        text = fields(app)
        assert "300/600" in text and "50.0%" in text
        assert "epoch  1.50" in text and "phase foundation" in text
        assert "8,192 tok/s" in text and "0.50 s/step" in text
        assert "2.00e-04" in text and "grad norm 0.800" in text
        # elapsed: from the start record to the pinned clock; ETA: 300 steps x 0.5 s
        assert "0:03:32" in text and "ETA 0:02:30" in text
        assert "eval" in text and "ppl" in text
        assert " 50%" in text and "━" in text  # the bar

        table = app.query_one(CheckpointsTable)
        assert table.row_count == 3
        steps = [str(table.get_row_at(i)[0]) for i in range(3)]
        assert steps == ["300", "200", "100"]  # newest first
        assert str(table.get_row_at(0)[4]) == "1m"  # age against the pinned clock

        health = text_of(app.query_one("#health-list").content)
        assert "spike" in health and "@120" in health
        assert "reduce the learning rate" in health

        gpu = text_of(app.query_one(GpuPanel).content)
        assert app.query_one(GpuPanel).border_subtitle == "NVIDIA H100 80GB HBM3"
        assert "69.3/80 GiB" in gpu
        assert "util 97%" in gpu and "64°C" in gpu and "512 W" in gpu
        assert "torch peak 60.0 GiB" in gpu
        assert "nearing the 75 GiB line" in gpu


async def test_gpu_over_the_line_and_no_gpu(make_app):
    app = make_app(run_records(gpu_used_mb=78_000))
    async with app.run_test(size=SIZE) as pilot:
        panel = app.query_one(GpuPanel)
        await wait_for(lambda: panel.latest is not None, pilot=pilot)
        assert "above the 75 GiB line" in text_of(panel.content)
        panel.post_message(GpuSampled([], None, "log", "no NVIDIA GPU: NVML found no device"))
        await wait_for(lambda: not panel.latest.gpus, pilot=pilot)
        text = text_of(panel.content)
        assert "No NVIDIA GPU: NVML found no device." in text


async def test_local_gpu_sampling_says_plainly_when_there_is_none(make_app):
    from engine.model.gpu import get_probe

    probe = get_probe()
    app = make_app(local_gpu=True)  # a launched job runs on this machine: its GPUs are sampled here
    async with app.run_test(size=SIZE) as pilot:
        panel = app.query_one(GpuPanel)
        await wait_for(lambda: panel.latest is not None and panel.latest.source == "local", pilot=pilot)
        await wait_for(
            lambda: len(app.query_one(LossChart).train) == 300, pilot=pilot
        )  # the log's gpu record read
        assert panel.latest.source == "local"  # and it does not override the local sample
        if not probe.available:
            assert probe.reason.split(":")[0].lower() in text_of(panel.content).lower()


async def test_messages_batch_steps_and_coalesce_gauges(make_app):
    seen = []
    app = make_app()
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        chart = app.query_one(LossChart)
        await wait_for(lambda: len(chart.train) == 300, pilot=pilot)
        panels = len(app.query(".run-view"))
    batches = [m for m in seen if isinstance(m, StepsLogged)]
    # 300 steps reach each panel in a handful of batches, not 300 messages each.
    assert panels >= 5 and 0 < len(batches) <= panels * 8
    assert sum(len(m.records) for m in batches) == panels * 300
    assert GpuSampled([]).can_replace(GpuSampled([{"index": 0}]))
    assert LinesSkipped(2).can_replace(LinesSkipped(1))
    assert not StepsLogged([]).can_replace(StepsLogged([]))


def test_to_messages_keeps_order_and_only_the_newest_gpu():
    recs = [
        {"t": 1, "kind": "step", "step": 1, "loss": 2.0},
        {"t": 1, "kind": "gpu", "gpus": [{"index": 0, "used_mb": 1}]},
        {"t": 1, "kind": "step", "step": 2, "loss": 1.9},
        {"t": 1, "kind": "save", "step": 2, "path": "p"},
        {"t": 1, "kind": "step", "step": 3, "loss": 1.8},
        {"t": 1, "kind": "gpu", "gpus": [{"index": 0, "used_mb": 2}]},
        {"t": 1, "kind": "mystery"},
    ]
    msgs = to_messages(recs)
    kinds = [type(m).__name__ for m in msgs]
    assert kinds == ["StepsLogged", "CheckpointSaved", "StepsLogged", "GpuSampled"]
    assert [r["step"] for r in msgs[0].records] == [1, 2]
    assert msgs[-1].gpus[0]["used_mb"] == 2


async def test_resumed_run_keeps_the_continuing_curve(make_app):
    recs = run_records(steps=50)
    app = make_app(recs)
    async with app.run_test(size=SIZE) as pilot:
        chart = app.query_one(LossChart)
        await wait_for(lambda: len(chart.train) == 50, pilot=pilot)
        append_records(
            app.source.run_dir,
            [{"t": 1, "kind": "resume", "step": 30, "from_step": 30, "path": "x"}]
            + [{"t": 1, "kind": "step", "step": s, "loss": 0.5, "epoch": s / 200} for s in range(31, 41)],
        )
        await wait_for(lambda: chart.train.last_step == 40, pilot=pilot)
        assert len(chart.train) == 40
        assert list(chart.train.values)[30:] == [0.5] * 10
        await wait_for(lambda: "resumed" in fields(app), pilot=pilot)


async def test_nan_loss_is_shown_not_drawn(make_app):
    app = make_app(run_records(steps=20))
    async with app.run_test(size=SIZE) as pilot:
        chart = app.query_one(LossChart)
        await wait_for(lambda: len(chart.train) == 20, pilot=pilot)
        append_records(
            app.source.run_dir, [{"t": 1, "kind": "step", "step": 21, "loss": "nan", "epoch": 0.1}]
        )
        await wait_for(lambda: len(chart.train) == 21, pilot=pilot)
        chart.redraw()
        assert "loss nan" in text_of(app.query_one("#loss-caption").content)
        x, y, _ = chart.train.sample(50)
        assert len(x) == 20  # the NaN point is left out of the drawing
        await wait_for(lambda: "nan" in fields(app), pilot=pilot)


async def test_checkpoint_removed_and_lines_skipped(make_app):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        table = app.query_one(CheckpointsTable)
        await wait_for(lambda: table.row_count == 3, pilot=pilot)
        append_records(
            app.source.run_dir,
            [{"t": 1, "kind": "checkpoint_removed", "step": 300, "path": "outputs/scripted/checkpoint-100"}],
        )
        await wait_for(lambda: table.row_count == 2, pilot=pilot)
        with open(app.source.run_dir / "events.jsonl", "a") as f:
            f.write("not json\n{torn\n[1, 2]\n\x00\x01\n")
        health = app.query_one(HealthPanel)
        await wait_for(lambda: health.skipped == 4, pilot=pilot)
        assert "4 torn or foreign line(s)" in text_of(app.query_one("#health-list").content)


async def test_failed_run_shows_in_health_and_progress(make_app):
    end = {"t": T_END, "kind": "end", "step": 10, "status": "failed", "message": "RuntimeError: boom"}
    app = make_app(run_records(steps=10), end=end, exit_code=1)
    async with app.run_test(size=SIZE) as pilot:
        health = app.query_one(HealthPanel)
        await wait_for(lambda: health.failure is not None, pilot=pilot)
        assert "RuntimeError: boom" in text_of(app.query_one("#health-list").content)
        await wait_for(lambda: "failed" in fields(app), pilot=pilot)
        assert "failed at step 10" in app.sub_title
        assert app.check_action("pause", ()) is False  # nothing left to pause: not offered


T_END = 1_750_000_100.0


# -- keys ----------------------------------------------------------------------------------


async def test_p_pauses_and_resumes_at_the_step_boundary(make_app):
    """p goes to the trainer through the control file; its `paused` record changes the screen,
    and the footer then offers Resume."""
    seen = []
    app = make_app()
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        await wait_for(lambda: "training" in app.sub_title, pilot=pilot)
        await pilot.press("p")
        assert app.state.paused  # the one place the cockpit holds it
        assert any(isinstance(m, ControlRequested) and m.action == "pause" for m in seen)
        await wait_for(lambda: "paused at step 300" in fields(app), pilot=pilot)
        assert "paused at step 300" in app.sub_title
        assert app.check_action("resume", ()) and not app.check_action("pause", ())
        await pilot.press("p")
        assert not app.state.paused
        await wait_for(lambda: "training" in fields(app) and "training" in app.sub_title, pilot=pilot)
    commands = [json.loads(line)["command"] for line in (app.source.run_dir / "control.jsonl").open()]
    assert commands[:2] == ["pause", "resume"]


async def test_s_and_e_ask_for_a_save_and_an_eval(make_app):
    app = make_app()
    log = app.source.run_dir / "events.jsonl"

    def kinds() -> list[str]:
        return [json.loads(line)["kind"] for line in log.read_text().splitlines()]

    async with app.run_test(size=SIZE) as pilot:
        await wait_for(lambda: "training" in app.sub_title, pilot=pilot)
        before = kinds()
        await pilot.press("s")
        await wait_for(lambda: kinds()[len(before) :] == ["save"], pilot=pilot)  # the job saved
        await pilot.press("e")
        await wait_for(lambda: kinds()[len(before) :] == ["save", "eval"], pilot=pilot)
        await wait_for(lambda: app.query_one(LossChart).eval.values[-1] == pytest.approx(1.1), pilot=pilot)


async def test_e_is_disabled_without_a_validation_set(make_app):
    app = make_app(can_eval=False)
    async with app.run_test(size=SIZE) as pilot:
        assert app.check_action("evaluate", ()) is None
        await pilot.press("e")
        assert not app.source.controls.eval_now.is_set()


async def test_q_asks_first_then_stops_safely_and_exits(make_app):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(lambda: app.training_alive and "training" in app.sub_title, pilot=pilot)
        await pilot.press("q")
        assert isinstance(app.screen, ConfirmQuit)
        await pilot.press("n")  # keep training
        assert not isinstance(app.screen, ConfirmQuit)
        assert not app.source.controls.stop.is_set()
        await pilot.press("ctrl+q")  # the same question
        assert isinstance(app.screen, ConfirmQuit)
        await pilot.press("y")
        assert app.source.controls.stop.is_set()
        assert app.source.controls.stop_reason == "operator quit"
        await wait_for(lambda: not app.is_running, 10, pilot=pilot)
    assert app.ended  # the end record was drained before exiting
    end = end_record(app.source.job)
    assert end["status"] == "stopped" and end["reason"] == "operator quit"


async def test_quitting_a_finished_run_exits_at_once_and_says_no_stop(make_app, capsys):
    from cockpit.launch import stop_job

    recs = run_records(steps=20)
    app = make_app(recs, end={"t": T_END, "kind": "end", "step": 20, "status": "completed"})
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(lambda: app.ended, pilot=pilot)
        assert "completed at step 20" in app.sub_title
        for action in ("pause", "resume", "save", "evaluate"):
            assert app.check_action(action, ()) is False  # not offered any more
        keys = {b.binding.key for b in app.active_bindings.values() if b.binding.show and b.enabled}
        assert not keys & {"p", "s", "e"}
        await pilot.press("p", "s", "e", "q")
        await wait_for(lambda: not app.is_running, pilot=pilot)
    assert app.return_code == 0
    assert stop_job(app) == 0
    assert "stopping training" not in capsys.readouterr().err
    assert (
        not (app.source.run_dir / "control.jsonl").exists()
        or not (app.source.run_dir / "control.jsonl").read_text()
    )


async def test_a_signal_stop_ends_the_app_after_the_save(make_app):
    app = make_app()
    seen = []
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        await wait_for(lambda: app.training_alive and "training" in app.sub_title, pilot=pilot)
        app.source.controls.request_stop("signal SIGHUP")  # what launch's handler does
        assert app.check_action("pause", ()) is None  # greyed while it saves
        await wait_for(lambda: not app.is_running, 10, pilot=pilot)
    assert any(isinstance(m, ControlRequested) and m.action == "stop" for m in seen)
    assert end_record(app.source.job)["reason"] == "signal SIGHUP"


async def test_a_crash_of_the_ui_stops_training_with_a_save(make_app, monkeypatch):
    app = make_app()

    def boom(self, message):
        raise RuntimeError("panel bug")

    with pytest.raises(RuntimeError, match="panel bug"):
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(lambda: app.training_alive and "training" in app.sub_title, pilot=pilot)
            monkeypatch.setattr(HealthPanel, "on_alert_raised", boom)  # the next alert crashes the UI
            append_records(
                app.source.run_dir,
                [{"t": 1, "kind": "alert", "rule": "x", "level": "warning", "message": "m"}],
            )
            await pilot.pause(1.0)
    assert app.source.job.wait(30) == 0  # the app asked the stop itself, on its way down
    end = end_record(app.source.job)
    assert end["status"] == "stopped" and end["reason"] == "cockpit closed"
    saves = [json.loads(line) for line in (app.source.run_dir / "events.jsonl").open()]
    assert saves[-2]["kind"] == "save" and saves[-2]["step"] == 300  # the trainer saved and ended


async def test_training_error_shows_and_the_keys_go(make_app):
    end = {"t": T_END, "kind": "end", "step": 10, "status": "error", "message": "data.jsonl:3: bad row"}
    app = make_app(run_records(steps=10), end=end, exit_code=2)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(lambda: app.query_one(HealthPanel).failure is not None, pilot=pilot)
        await wait_for(lambda: "error at step 10" in app.sub_title, pilot=pilot)
        assert app.source.job.wait(10) == 2
        assert app.check_action("pause", ()) is False
        await pilot.press("q")  # nothing trains any more: exits at once
        await wait_for(lambda: not app.is_running, pilot=pilot)


async def test_question_mark_shows_help(make_app):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


async def test_chart_keys_toggle_smoothing_log_and_zoom(make_app):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        chart = app.query_one(LossChart)
        await wait_for(lambda: len(chart.train) == 300, pilot=pilot)
        assert chart.smoothing and not chart.log_scale and chart.zoom == 0
        await pilot.press("m", "l", "z", "z", "z")
        assert not chart.smoothing and chart.log_scale
        assert ZOOMS[chart.zoom] == 100
        chart.redraw()
        caption = text_of(app.query_one("#loss-caption").content)
        assert "last 100 steps" in caption and "log" in caption and "smoothed" not in caption
        x, _, _ = chart.train.sample(200, chart.train.last_step - 99)
        assert x[0] == 201 and x[-1] == 300
        await pilot.press("z")
        assert ZOOMS[chart.zoom] is None


async def test_number_keys_switch_tabs(make_app):
    from textual.widgets import TabbedContent

    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        tabs = app.query_one(TabbedContent)
        await pilot.press("2")
        assert tabs.active == "chat"
        await pilot.press("3")
        assert tabs.active == "checklist"
        assert app.query_one("#checklist-pane").display
        await pilot.press("1")
        assert tabs.active == "dashboard"
        await pilot.press("f2")
        assert tabs.active == "chat"
        await pilot.press("f1")
        assert tabs.active == "dashboard"


async def test_enter_on_a_checkpoint_opens_it_in_the_chat_pane(make_app):
    from textual.widgets import TabbedContent

    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        table = app.query_one(CheckpointsTable)
        await wait_for(lambda: table.row_count == 3, pilot=pilot)
        table.focus()
        await pilot.press("down", "enter")
        assert app.query_one(TabbedContent).active == "chat"
        pane = app.query_one("#chat-pane")
        if isinstance(pane, PanePlaceholder):
            assert pane.checkpoint == "outputs/scripted/checkpoint-200"


async def test_read_only_attach_disables_controls(make_app):
    app = make_app(controls=False)
    async with app.run_test(size=SIZE) as pilot:
        assert app.source.read_only
        assert "read-only" in app.sub_title
        for action in ("pause", "resume", "save", "evaluate"):
            assert app.check_action(action, ()) is False
        await pilot.pause(0.3)
        footer = {b.binding.description for b in app.active_bindings.values() if b.binding.show and b.enabled}
        assert not footer & {"Pause", "Resume", "Save", "Eval"} and "Quit" in footer
        await pilot.press("p", "s", "e")  # not offered: nothing happens, nothing breaks
        await pilot.press("question_mark")
        assert "read-only" in text_of(app.screen.query_one("#help-box Static").content)
        await pilot.press("escape", "q")
        await wait_for(lambda: not app.is_running, pilot=pilot)


async def test_progress_status_before_any_record(make_app):
    app = make_app([])
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(lambda: "loading model and data" in fields(app), pilot=pilot)
        assert isinstance(app.query_one(ProgressPanel), ProgressPanel)
        assert app.query_one(CheckpointsTable).border_subtitle == "none yet"
        msgs = [CheckpointSaved({"t": 1, "kind": "save", "step": 1, "path": "p"})]
        app.broadcast(*msgs)
        await wait_for(lambda: app.query_one(CheckpointsTable).row_count == 1, pilot=pilot)


async def test_panes_come_from_factories_and_get_run_messages(make_app):
    from textual.widgets import Static

    class Checklist(Static):
        def __init__(self) -> None:
            super().__init__("my checklist", classes="run-view")
            self.saves = []

        def on_checkpoint_saved(self, message: CheckpointSaved) -> None:
            self.saves.append(message.record["step"])

    app = make_app(run_records(steps=100))
    app.panes = {"checklist": Checklist}
    async with app.run_test(size=SIZE) as pilot:
        pane = app.query_one(Checklist)
        assert pane.id == "checklist-pane" and app.pane_widgets["checklist"] is pane
        await wait_for(lambda: pane.saves == [100], pilot=pilot)
        assert isinstance(app.pane_widgets["chat"], PanePlaceholder)


async def test_mfu_shows_when_the_engine_logs_it(make_app):
    recs = run_records(steps=5)
    recs[-2] = {**recs[-2], "mfu": 0.3812}  # the last step record (the gpu record is last)
    app = make_app(recs)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(lambda: "MFU 38%" in fields(app), pilot=pilot)


async def test_curriculum_phase_and_mix_show_in_progress(make_app):
    recs = run_records(steps=10) + [
        {
            "t": 1,
            "kind": "phase",
            "step": 10,
            "epoch": 1.5,
            "name": "integration",
            "weights": {"psychology": 0.5},
        },
        {
            "t": 1,
            "kind": "mix",
            "step": 10,
            "phase": "integration",
            "phase_examples": {"psychology": 30, "esoteric": 70},
            "target": {"psychology": 0.4, "esoteric": 0.6},
        },
    ]
    app = make_app(recs)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(lambda: "phase integration" in fields(app), pilot=pilot)
        await wait_for(
            lambda: "esoteric 70/60%" in fields(app) and "psychology 30/40%" in fields(app), pilot=pilot
        )


async def test_log_scale_survives_the_guides_zero_floor_and_zero_losses(make_app):
    """Past epoch 3 the guide only gives a ceiling (band 0-1.0): no log of zero, no crash."""
    recs = [
        {"t": 1, "kind": "step", "step": s, "loss": 0.0 if s == 7 else 3.0 / s, "epoch": s / 10}
        for s in range(1, 60)
    ]
    app = make_app(recs)
    async with app.run_test(size=SIZE) as pilot:
        chart = app.query_one(LossChart)
        await wait_for(lambda: len(chart.train) == 59, pilot=pilot)
        for key in ("l", "m", "l"):
            await pilot.press(key)
            chart.redraw()
            rendered = chart.query_one("#loss-plot").render()
            assert "chart unavailable" not in rendered.plain
        assert "guide < 1.00" in text_of(app.query_one("#loss-caption").content)


async def test_a_chart_that_cannot_draw_says_so_and_the_cockpit_stays(make_app):
    app = make_app(run_records(steps=20))
    async with app.run_test(size=SIZE) as pilot:
        plot = app.query_one("#loss-plot")

        def broken():
            raise ValueError("math domain error")

        plot.plt.build = broken
        rendered = plot.render()
        assert "chart unavailable: ValueError: math domain error" in rendered.plain
        await pilot.pause(0.6)
        assert app.is_running


async def test_a_resolved_alert_says_when_and_leaves_the_error_count(make_app):
    recs = run_records(steps=20) + [
        {
            "t": 1,
            "kind": "alert",
            "step": 10,
            "rule": "perplexity",
            "level": "critical",
            "message": "validation perplexity 56 > 20.0",
            "advice": "investigate",
        },
    ]
    app = make_app(recs)
    async with app.run_test(size=SIZE) as pilot:
        health = app.query_one(HealthPanel)
        await wait_for(lambda: "perplexity" in health.alerts, pilot=pilot)
        assert health.border_subtitle == "1 error · 0 warning"
        append_records(
            app.source.run_dir,
            [
                {
                    "t": 2,
                    "kind": "alert_resolved",
                    "step": 20,
                    "rule": "perplexity",
                    "message": "resolved at step 20: perplexity now 1.75",
                }
            ],
        )
        await wait_for(lambda: "perplexity" in health.resolved, pilot=pilot)
        assert health.border_subtitle == "0 error · 0 warning · 1 resolved"
        text = text_of(app.query_one("#health-list").content)
        assert "✓ perplexity resolved at step 20: perplexity now 1.75" in text
        assert "was: validation perplexity 56 > 20.0" in text


async def test_the_chart_band_comes_from_the_config(make_app, tmp_path):
    from cockpit_script import launched_app

    health = {"expected_loss": [[0, 9.0], [2, 5.5], [4, 3.0]]}
    app = launched_app(tmp_path / "own", run_records(steps=60), config={"health": health})
    async with app.run_test(size=(80, 24)) as pilot:
        chart = app.query_one(LossChart)
        await wait_for(lambda: len(chart.train) == 60, pilot=pilot)
        chart.redraw()
        caption = text_of(app.query_one("#loss-caption").content, width=70)
        # 60 steps at 200 a epoch: epoch 0.3, between (0, 9.0) and (2, 5.5)
        assert "expected < 8.47" in caption and "guide" not in caption
        assert "(epoch 0: loss < 9 (the config's band))" in " ".join(caption.split())
        widget = app.query_one("#loss-caption")
        await wait_for(lambda: widget.size.height >= 2, pilot=pilot)
        assert widget.size.height >= 2 and widget.size.width < len(
            " ".join(caption.split())
        )  # wrapped, whole


def test_run_state_labels_follow_the_records():
    from cockpit.run_state import RunState

    state = RunState(read_only=False)
    assert state.label().startswith("starting")
    state.observe([{"kind": "start", "step": 0}, {"kind": "train_begin", "step": 0, "max_steps": 50}])
    assert state.label() == "training"
    state.observe([{"kind": "step", "step": 7}, {"kind": "paused", "step": 7}])
    assert state.label() == "paused at step 7"
    state.stop_requested()
    assert state.label() == "stopping: saving a checkpoint at the next step"
    state.observe([{"kind": "end", "step": 7, "status": "stopped"}])
    assert state.label() == "stopped at step 7" and not state.live
    again = RunState(read_only=False)
    again.observe(
        [
            {"kind": "start", "step": 50},
            {"kind": "resume", "step": 50, "from_step": 50},
            {"kind": "train_begin", "step": 50, "max_steps": 50},
            {"kind": "end", "step": 50, "status": "completed"},
        ]
    )
    assert again.already_finished and again.label() == "already completed at step 50: nothing left to train"
    attached = RunState(read_only=True)
    attached.observe([{"kind": "start", "step": 0}])
    attached.writer(False)
    assert attached.label() == "attached, read-only · not running (no end record) at step 0"


async def test_re_running_a_finished_run_says_so(make_app):
    """The README command again on a finished demo: the trainer resumes at max_steps and ends."""
    recs = run_records(steps=20, max_steps=20)[:-1] + [
        {"t": T_END, "kind": "start", "step": 20, "max_steps": 20, "pid": 2},
        {"t": T_END, "kind": "resume", "step": 20, "from_step": 20, "path": "outputs/scripted/checkpoint-20"},
        {"t": T_END, "kind": "train_begin", "step": 20, "max_steps": 20},
    ]
    end = {"t": T_END, "kind": "end", "step": 20, "status": "completed"}
    app = make_app(recs, end=end)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(lambda: app.ended, pilot=pilot)
        assert app.sub_title == "scripted · already completed at step 20: nothing left to train"
        await wait_for(lambda: app._notifications, pilot=pilot)
        (note,) = list(app._notifications)
        assert note.title == "nothing left to train" and "--resume never --force" in note.message


async def test_data_preparation_shows_as_its_own_phase(make_app):
    t = 1_750_000_000.0
    recs = [
        {
            "t": t,
            "kind": "prepare",
            "rows": 0,
            "tokens": 0,
            "bytes_done": 0,
            "bytes_total": None,
            "started": True,
        },
        {
            "t": t + 2,
            "kind": "prepare",
            "rows": 12_345,
            "tokens": 6_000_000,
            "bytes_done": 30,
            "bytes_total": 100,
            "rows_per_s": 6_172.5,
            "eta_s": 4.7,
        },
    ]
    app = make_app(recs, clock_t=t + 3)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(lambda: "preparing data 30%" in fields(app), pilot=pilot)
        assert "12,345 rows" in fields(app) and "6,172 rows/s" in fields(app)
        append_records(
            app.source.run_dir,
            [{"t": t + 9, "kind": "prepare", "done": True, "cached": False, "rows": 40_000}],
        )
        await wait_for(lambda: "preparing data" not in fields(app), pilot=pilot)
