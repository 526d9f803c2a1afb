"""The cockpit driven by a scripted source: every panel and every key, with Pilot."""

from __future__ import annotations

import time

import pytest
from cockpit_script import fields, last_t, run_records, text_of, wait_for

from cockpit.app import CockpitApp
from cockpit.messages import (
    CheckpointSaved,
    ControlRequested,
    GpuSampled,
    LinesSkipped,
    StepsLogged,
    to_messages,
)
from cockpit.source import ScriptedSource
from cockpit.widgets.checkpoints_table import CheckpointsTable
from cockpit.widgets.confirm_quit import ConfirmQuit
from cockpit.widgets.gpu_panel import GpuPanel
from cockpit.widgets.health_panel import HealthPanel
from cockpit.widgets.help_screen import HelpScreen
from cockpit.widgets.loss_chart import ZOOMS, LossChart
from cockpit.widgets.pane_placeholder import PanePlaceholder
from cockpit.widgets.progress_panel import ProgressPanel
from engine.control import Controls
from engine.errors import UserError

SIZE = (120, 40)
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


class Done:
    def __init__(self, status: str) -> None:
        self.status = status


def stand_in_trainer(source: ScriptedSource) -> Done:
    """Plays the engine: trains until asked to stop, then saves the current step and ends."""
    c = source.controls
    while not c.stop.wait(0.02):
        pass
    time.sleep(0.5)  # the step under way finishes first
    t = time.time()
    source.feed(
        [
            {"t": t, "kind": "save", "step": 300, "path": "outputs/scripted/checkpoint-300", "loss": 1.0},
            {"t": t, "kind": "end", "step": 300, "status": "stopped"},
        ]
    )
    return Done("stopped")


def make_app(records=None, *, controls=True, train=None, can_eval=True, clock_t=None) -> CockpitApp:
    records = run_records() if records is None else records
    source = ScriptedSource(
        records,
        controls=Controls() if controls else None,
        train=train,
        can_eval=can_eval,
        run_name="scripted",
    )
    t = clock_t if clock_t is not None else (last_t(records) + 60 if records else 0.0)
    return CockpitApp(source, clock=lambda: t)


# -- panels --------------------------------------------------------------------------------


async def test_every_panel_shows_the_scripted_run():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        chart = app.query_one(LossChart)
        await wait_for(pilot, lambda: len(chart.train) == 300)
        await pilot.pause(0.6)  # one redraw and one panel refresh later
        assert len(chart.eval) == 3
        assert chart.steps_per_epoch == pytest.approx(200)
        caption = text_of(app.query_one("#loss-caption").content)
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


async def test_gpu_over_the_line_and_no_gpu():
    app = make_app(run_records(gpu_used_mb=78_000))
    async with app.run_test(size=SIZE) as pilot:
        panel = app.query_one(GpuPanel)
        await wait_for(pilot, lambda: panel.latest is not None)
        assert "above the 75 GiB line" in text_of(panel.content)
        panel.post_message(GpuSampled([], None, "log", "no NVIDIA GPU: NVML found no device"))
        await wait_for(pilot, lambda: not panel.latest.gpus)
        text = text_of(panel.content)
        assert "No NVIDIA GPU: NVML found no device." in text


async def test_local_gpu_sampling_says_plainly_when_there_is_none():
    from engine.gpu import get_probe

    probe = get_probe()
    source = ScriptedSource(run_records(), controls=Controls())
    source.local_gpu = True
    app = CockpitApp(source, clock=lambda: 0.0)
    async with app.run_test(size=SIZE) as pilot:
        panel = app.query_one(GpuPanel)
        await wait_for(pilot, lambda: panel.latest is not None and panel.latest.source == "local")
        await pilot.pause(0.3)
        assert panel.latest.source == "local"  # the log's gpu record does not override it
        if not probe.available:
            assert probe.reason.split(":")[0].lower() in text_of(panel.content).lower()


async def test_messages_batch_steps_and_coalesce_gauges():
    seen = []
    app = make_app()
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        chart = app.query_one(LossChart)
        await wait_for(pilot, lambda: len(chart.train) == 300)
    batches = [m for m in seen if isinstance(m, StepsLogged)]
    # 300 steps reach each of the 5 panels in a handful of batches, not 300 messages each.
    assert 0 < len(batches) <= 5 * 8
    assert sum(len(m.records) for m in batches) == 5 * 300
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


async def test_resumed_run_keeps_the_continuing_curve():
    recs = run_records(steps=50)
    app = make_app(recs)
    async with app.run_test(size=SIZE) as pilot:
        chart = app.query_one(LossChart)
        await wait_for(pilot, lambda: len(chart.train) == 50)
        app.source.feed(
            [{"t": 1, "kind": "resume", "step": 30, "from_step": 30, "path": "x"}]
            + [{"t": 1, "kind": "step", "step": s, "loss": 0.5, "epoch": s / 200} for s in range(31, 41)]
        )
        await wait_for(pilot, lambda: chart.train.last_step == 40)
        assert len(chart.train) == 40
        assert list(chart.train.values)[30:] == [0.5] * 10
        await wait_for(pilot, lambda: "resumed" in fields(app))


async def test_nan_loss_is_shown_not_drawn():
    app = make_app(run_records(steps=20))
    async with app.run_test(size=SIZE) as pilot:
        chart = app.query_one(LossChart)
        await wait_for(pilot, lambda: len(chart.train) == 20)
        app.source.feed([{"t": 1, "kind": "step", "step": 21, "loss": "nan", "epoch": 0.1}])
        await wait_for(pilot, lambda: len(chart.train) == 21)
        chart.redraw()
        assert "loss nan" in text_of(app.query_one("#loss-caption").content)
        x, y, _ = chart.train.sample(50)
        assert len(x) == 20  # the NaN point is left out of the drawing
        await wait_for(pilot, lambda: "nan" in fields(app))


async def test_checkpoint_removed_and_lines_skipped():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        table = app.query_one(CheckpointsTable)
        await wait_for(pilot, lambda: table.row_count == 3)
        app.source.feed(
            [{"t": 1, "kind": "checkpoint_removed", "step": 300, "path": "outputs/scripted/checkpoint-100"}]
        )
        await wait_for(pilot, lambda: table.row_count == 2)
        app.source.bad_lines = 4
        health = app.query_one(HealthPanel)
        await wait_for(pilot, lambda: health.skipped == 4)
        assert "4 torn or foreign line(s)" in text_of(app.query_one("#health-list").content)


async def test_failed_run_shows_in_health_and_progress():
    recs = run_records(steps=10) + [
        {"t": T_END, "kind": "end", "step": 10, "status": "failed", "message": "RuntimeError: boom"}
    ]
    app = make_app(recs)
    async with app.run_test(size=SIZE) as pilot:
        health = app.query_one(HealthPanel)
        await wait_for(pilot, lambda: health.failure is not None)
        assert "RuntimeError: boom" in text_of(app.query_one("#health-list").content)
        await wait_for(pilot, lambda: "failed" in fields(app))
        assert app.check_action("pause", ()) is None  # nothing left to pause


T_END = 1_750_000_100.0


# -- keys ----------------------------------------------------------------------------------


async def test_p_pauses_and_resumes_at_the_step_boundary():
    seen = []
    app = make_app()
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        c = app.source.controls
        await pilot.press("p")
        assert c.pause.is_set()
        await pilot.pause(0.1)
        await wait_for(pilot, lambda: "pausing at the next step" in fields(app))
        assert any(isinstance(m, ControlRequested) and m.action == "pause" for m in seen)
        app.source.feed([{"t": 1, "kind": "paused", "step": 301}])
        await wait_for(pilot, lambda: "paused at step 301" in fields(app))
        await pilot.press("p")
        assert not c.pause.is_set()
        app.source.feed([{"t": 1, "kind": "resumed", "step": 301}])
        await wait_for(pilot, lambda: "training" in fields(app))


async def test_s_and_e_ask_for_a_save_and_an_eval():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        c = app.source.controls
        await pilot.press("s")
        assert c.save_now.is_set()
        await pilot.press("e")
        assert c.eval_now.is_set()


async def test_e_is_disabled_without_a_validation_set():
    app = make_app(can_eval=False)
    async with app.run_test(size=SIZE) as pilot:
        assert app.check_action("evaluate", ()) is None
        await pilot.press("e")
        assert not app.source.controls.eval_now.is_set()


async def test_q_asks_first_then_stops_safely_and_exits():
    app = make_app(train=stand_in_trainer)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.training is not None and app.training.is_alive())
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
        await wait_for(pilot, lambda: not app.is_running, timeout=10)
    assert app.finished is not None and app.finished.status == "stopped"
    assert app.ended  # the end record was drained before exiting


async def test_q_exits_at_once_when_nothing_trains():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("q")
        await wait_for(pilot, lambda: not app.is_running)
    assert app.return_code == 0


async def test_a_signal_stop_ends_the_app_after_the_save():
    app = make_app(train=stand_in_trainer)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.training is not None and app.training.is_alive())
        app.source.controls.request_stop("signal SIGHUP")  # what launch's handler does
        await wait_for(pilot, lambda: "stopping" in fields(app))
        await wait_for(pilot, lambda: not app.is_running, timeout=10)
    assert app.finished.status == "stopped"


async def test_a_crash_of_the_ui_stops_training_with_a_save(monkeypatch):
    fed = []

    def trainer(source):
        done = stand_in_trainer(source)
        fed.append(True)
        return done

    app = make_app(train=trainer)

    def boom(self, message):
        raise RuntimeError("panel bug")

    with pytest.raises(RuntimeError, match="panel bug"):
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.training is not None and app.training.is_alive())
            monkeypatch.setattr(HealthPanel, "on_alert_raised", boom)  # the next alert crashes the UI
            app.source.feed([{"t": 1, "kind": "alert", "rule": "x", "level": "warning", "message": "m"}])
            await pilot.pause(1.0)
    app.training.join(timeout=30)  # the app asked the stop itself, on its way down
    assert app.source.controls.stop.is_set() and app.source.controls.stop_reason == "cockpit closed"
    assert fed == [True]  # the trainer saved and ended before we returned


async def test_training_error_is_kept_for_the_exit_code():
    def bad(source):
        source.feed([{"t": 1, "kind": "end", "status": "error", "message": "data.jsonl:3: bad row"}])
        raise UserError("data.jsonl:3: bad row", "fix the row")

    app = make_app(train=bad)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.finished is not None)
        await wait_for(pilot, lambda: app.query_one(HealthPanel).failure is not None)
        assert isinstance(app.finished.error, UserError)
        await pilot.press("q")  # nothing trains any more: exits at once
        await wait_for(pilot, lambda: not app.is_running)


async def test_question_mark_shows_help():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


async def test_chart_keys_toggle_smoothing_log_and_zoom():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        chart = app.query_one(LossChart)
        await wait_for(pilot, lambda: len(chart.train) == 300)
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


async def test_number_keys_switch_tabs():
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


async def test_enter_on_a_checkpoint_opens_it_in_the_chat_pane():
    from textual.widgets import TabbedContent

    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        table = app.query_one(CheckpointsTable)
        await wait_for(pilot, lambda: table.row_count == 3)
        table.focus()
        await pilot.press("down", "enter")
        assert app.query_one(TabbedContent).active == "chat"
        pane = app.query_one("#chat-pane")
        if isinstance(pane, PanePlaceholder):
            assert pane.checkpoint == "outputs/scripted/checkpoint-200"


async def test_read_only_attach_disables_controls():
    app = make_app(controls=False)
    async with app.run_test(size=SIZE) as pilot:
        assert app.source.read_only
        assert "read-only" in app.sub_title
        for action in ("pause", "save", "evaluate"):
            assert app.check_action(action, ()) is None
        await pilot.press("p", "s", "e")  # greyed out: nothing happens, nothing breaks
        await pilot.press("question_mark")
        assert "read-only" in text_of(app.screen.query_one("#help-box Static").content)
        await pilot.press("escape", "q")
        await wait_for(pilot, lambda: not app.is_running)


async def test_progress_status_before_any_record():
    app = make_app([])
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.2)
        await wait_for(pilot, lambda: "loading model and data" in fields(app))
        assert isinstance(app.query_one(ProgressPanel), ProgressPanel)
        assert app.query_one(CheckpointsTable).border_subtitle == "none yet"
        msgs = [CheckpointSaved({"t": 1, "kind": "save", "step": 1, "path": "p"})]
        app.broadcast(*msgs)
        await wait_for(pilot, lambda: app.query_one(CheckpointsTable).row_count == 1)


async def test_panes_come_from_factories_and_get_run_messages():
    from textual.widgets import Static

    class Checklist(Static):
        def __init__(self) -> None:
            super().__init__("my checklist", classes="run-view")
            self.saves = []

        def on_checkpoint_saved(self, message: CheckpointSaved) -> None:
            self.saves.append(message.record["step"])

    source = ScriptedSource(run_records(steps=100), controls=Controls())
    app = CockpitApp(source, clock=lambda: 0.0, panes={"checklist": Checklist})
    async with app.run_test(size=SIZE) as pilot:
        pane = app.query_one(Checklist)
        assert pane.id == "checklist-pane" and app.pane_widgets["checklist"] is pane
        await wait_for(pilot, lambda: pane.saves == [100])
        assert isinstance(app.pane_widgets["chat"], PanePlaceholder)


async def test_mfu_shows_when_the_engine_logs_it():
    recs = run_records(steps=5)
    recs[-2] = {**recs[-2], "mfu": 0.3812}  # the last step record (the gpu record is last)
    app = make_app(recs)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: "MFU 38%" in fields(app))


async def test_curriculum_phase_and_mix_show_in_progress():
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
        await wait_for(pilot, lambda: "phase integration" in fields(app))
        await wait_for(pilot, lambda: "esoteric 70/60%" in fields(app) and "psychology 30/40%" in fields(app))


async def test_log_scale_survives_the_guides_zero_floor_and_zero_losses():
    """Past epoch 3 the guide only gives a ceiling (band 0-1.0): no log of zero, no crash."""
    recs = [
        {"t": 1, "kind": "step", "step": s, "loss": 0.0 if s == 7 else 3.0 / s, "epoch": s / 10}
        for s in range(1, 60)
    ]
    app = make_app(recs)
    async with app.run_test(size=SIZE) as pilot:
        chart = app.query_one(LossChart)
        await wait_for(pilot, lambda: len(chart.train) == 59)
        for key in ("l", "m", "l"):
            await pilot.press(key)
            chart.redraw()
            rendered = chart.query_one("#loss-plot").render()
            assert "chart unavailable" not in rendered.plain
        assert "guide < 1.00" in text_of(app.query_one("#loss-caption").content)


async def test_a_chart_that_cannot_draw_says_so_and_the_cockpit_stays():
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


async def test_data_preparation_shows_as_its_own_phase():
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
        await wait_for(pilot, lambda: "preparing data 30%" in fields(app))
        assert "12,345 rows" in fields(app) and "6,172 rows/s" in fields(app)
        app.source.feed([{"t": t + 9, "kind": "prepare", "done": True, "cached": False, "rows": 40_000}])
        await wait_for(pilot, lambda: "preparing data" not in fields(app))
