"""The run log's declared records (engine/run/records.py): old logs load, strict mode refuses
what is not declared, sinks get what is written, a trainer's UserError crosses as fields."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cockpit_script import fields, text_of

from engine.errors import UserError
from engine.run import records
from engine.run.events import RunLog, read_events
from tests.wait import wait_for

OLD_LOG = Path(__file__).parent / "old_runlog" / "events.jsonl"
OLD_KINDS_LOG = Path(__file__).parent / "old_runlog" / "kinds" / "events.jsonl"  # curriculum, probes, ...


def raw_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- a log written by main before the declarations ------------------------------------------


def test_every_record_of_an_old_log_decodes_as_its_kind():
    raw = raw_lines(OLD_LOG) + raw_lines(OLD_KINDS_LOG)
    assert {r["kind"] for r in raw} >= {"start", "step", "eval", "save", "alert", "resume", "end", "gpu"} | {
        "curriculum",
        "phase",
        "mix",
        "skip",
        "probe",
        "checkpoint_removed",
        "note",
        "data",
        "prepare",
    }
    for r in raw:
        assert records.problems(r) == [], r
        typed = records.decode(r)
        assert type(typed) is records.KINDS[r["kind"]]
        for name, value in r.items():  # every field as written, under its own name
            assert getattr(typed, name) == value, (r["kind"], name)


def test_an_old_error_record_gives_back_message_and_fix_apart():
    end = records.decode(raw_lines(OLD_LOG)[-1])
    assert isinstance(end, records.End) and end.status == "error" and end.fix is None
    message, fix = end.message.split("\n  fix: ")  # how main wrote a UserError into `message`
    error = end.user_error()
    assert (error.message, error.fix) == (message, fix)


@pytest.mark.anyio
async def test_the_cockpit_attaches_to_an_old_log(tmp_path):
    from cockpit.launch import build_attach_app
    from cockpit.widgets.checkpoints_table import CheckpointsTable
    from cockpit.widgets.health_panel import HealthPanel
    from cockpit.widgets.loss_chart import LossChart

    run_dir = tmp_path / "logs" / "demo"
    run_dir.mkdir(parents=True)
    shutil.copy(OLD_LOG, run_dir / "events.jsonl")
    raw = raw_lines(OLD_LOG)
    steps = {r["step"] for r in raw if r["kind"] == "step"}
    saves = {r["path"] for r in raw if r["kind"] == "save"}
    rules = {r["rule"] for r in raw if r["kind"] == "alert"}
    message, fix = raw[-1]["message"].split("\n  fix: ")
    app = build_attach_app(run_dir, clock=lambda: raw[-1]["t"] + 60)
    async with app.run_test(size=(120, 40)) as pilot:
        chart = app.query_one(LossChart)
        await wait_for(lambda: len(chart.train) == len(steps) and app.ended, pilot=pilot)
        assert app.source.bad_lines == 0
        assert app.query_one(CheckpointsTable).row_count == len(saves)
        health = app.query_one(HealthPanel)
        await wait_for(lambda: health.failure is not None, pilot=pilot)
        assert set(health.alerts) == rules
        shown = text_of(app.query_one("#health-list").content, width=200)
        assert message in shown and fix in shown
        await wait_for(lambda: "error" in fields(app), pilot=pilot)
        await pilot.press("q")


def test_the_model_card_and_the_checklist_read_an_old_log(tmp_path):
    from engine.evaluate.checklist_rules import Sources
    from engine.ship.card import summarize_run

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(OLD_LOG, run_dir / "events.jsonl")
    raw = raw_lines(OLD_LOG)
    last_step = max((r for r in raw if r["kind"] == "step"), key=lambda r: (r["step"], r["t"]))
    last_eval = [r for r in raw if r["kind"] == "eval"][-1]
    data = [r for r in raw if r["kind"] == "data"][-1]
    s = summarize_run(run_dir)
    assert (s.rows, s.val_rows, s.by_category) == (data["rows"], data["val_rows"], data["by_category"])
    assert (s.final["step"], s.final["loss"]) == (last_step["step"], last_step["loss"])
    assert (s.final["eval_step"], s.final["eval_loss"]) == (last_eval["step"], last_eval["eval_loss"])
    assert s.final["status"] == raw[-1]["status"]
    src = Sources(run_dir)
    assert [r.step for r in src.steps] == sorted({r["step"] for r in raw if r["kind"] == "step"})
    assert len(src.evals) == sum(r["kind"] == "eval" for r in raw)


@pytest.mark.anyio
async def test_the_cockpit_shows_an_old_logs_probes_phases_and_retention(tmp_path):
    from cockpit.launch import build_attach_app
    from cockpit.widgets.checkpoints_table import CheckpointsTable
    from cockpit.widgets.loss_chart import LossChart

    run_dir = tmp_path / "logs" / "kinds"
    run_dir.mkdir(parents=True)
    shutil.copy(OLD_KINDS_LOG, run_dir / "events.jsonl")
    raw = raw_lines(OLD_KINDS_LOG)
    restart = max(i for i, r in enumerate(raw) if r["kind"] == "start")  # a fresh start: a new curve
    steps = {float(r["step"]) for r in raw[restart:] if r["kind"] == "step"}
    removed = {Path(r["path"]).name for r in raw if r["kind"] == "checkpoint_removed"}
    kept = {Path(r["path"]).name for r in raw if r["kind"] == "save"} - removed
    probes = {Path(r["path"]).name: r for r in raw if r["kind"] == "probe"}
    phase = [r["name"] for r in raw if r["kind"] == "phase"][-1]
    app = build_attach_app(run_dir, clock=lambda: raw[-1]["t"] + 60)
    async with app.run_test(size=(160, 50)) as pilot:
        await wait_for(lambda: app.ended, pilot=pilot)
        table = app.query_one(CheckpointsTable)
        await wait_for(lambda: {Path(k).name for k in table.saves} == kept, pilot=pilot)
        for key, saved in table.saves.items():
            want = probes[Path(key).name]
            assert (saved.probe["identity"].passed, saved.probe["identity"].total) == (
                want["passed"],
                want["total"],
            )
        chart = app.query_one(LossChart)
        assert list(chart.train.steps) == sorted(steps)  # the fresh start's curve replaced the crashed one
        await wait_for(lambda: f"phase {phase}" in fields(app), pilot=pilot)
        await pilot.press("q")


# -- tolerant decoding ------------------------------------------------------------------------


def test_unknown_kinds_and_fields_still_load():
    future = {"t": 5.0, "kind": "weather", "step": 3, "sky": "clear"}
    r = records.decode(future)
    assert isinstance(r, records.Unknown) and (r.kind, r.t, r.step) == ("weather", 5.0, 3)
    assert r.fields == {"sky": "clear"}
    newer = records.decode({"t": 1.0, "kind": "step", "step": 2, "loss": 1.5, "entropy": 0.3})
    assert isinstance(newer, records.Step) and newer.loss == 1.5
    odd = records.decode({"t": 1.0, "kind": "step", "step": "two"})  # a value its type does not fit
    assert isinstance(odd, records.Unknown) and odd.fields == {}


def test_the_scripted_runs_records_are_declared():
    from cockpit_script import run_records

    for r in run_records():  # what the cockpit tests feed the app stands for real records
        assert records.problems(r) == [], r


def test_the_headless_progress_line_shows_a_non_finite_loss(tmp_path):
    import io

    from engine.cli.headless import Progress

    out = io.StringIO()
    progress = Progress(stream=out, every_s=0.0)
    log = RunLog(tmp_path / "events.jsonl", [progress])
    # main's printer formatted the written "nan" with :.4f and its ValueError ended the run
    log.emit("step", step=8, loss=float("nan"), grad_norm=float("inf"), max_steps=30, tokens_per_s=5.0)
    log.emit("eval", step=10, eval_loss=float("nan"), perplexity=float("inf"))
    log.close()
    lines = out.getvalue().splitlines()
    assert "step 8/30 loss nan" in lines[0] and "eval step 10: eval_loss nan ppl inf" in lines[1]


# -- strict mode ----------------------------------------------------------------------------


def test_strict_mode_refuses_a_misspelled_field(tmp_path, monkeypatch):
    assert records.strict()  # tests/conftest.py sets it for the whole suite
    log = RunLog(tmp_path / "events.jsonl")
    with pytest.raises(records.RecordError, match="undeclared field.*eval_los"):
        log.emit("eval", step=5, eval_los=1.2)
    with pytest.raises(records.RecordError, match="undeclared record kind 'evaluation'"):
        log.emit("evaluation", step=5, eval_loss=1.2)
    with pytest.raises(records.RecordError, match="step"):
        log.emit("step", step="five", loss=1.0)
    assert read_events(log.path).records == []  # nothing written
    monkeypatch.delenv(records.STRICT_ENV)
    log.emit("eval", step=5, eval_los=1.2)  # a user's run: written as given, no error
    assert [{k: v for k, v in r.items() if k != "t"} for r in read_events(log.path).records] == [
        {"kind": "eval", "step": 5, "eval_los": 1.2}
    ]
    log.close()


class ListSink:
    """A metric sink as engine/train/sinks/ defines one: a run-log listener with close."""

    def __init__(self) -> None:
        self.got: list[dict] = []

    def __call__(self, record: dict) -> None:
        self.got.append(record)

    def close(self) -> None:
        pass


def test_a_sink_gets_the_dict_that_is_written(tmp_path):
    sink = ListSink()
    log = RunLog(tmp_path / "events.jsonl")
    log.listeners.extend([sink])  # as engine.train.train.run adds the opened sinks
    got = sink.got
    log.emit("step", step=1, loss=float("nan"), lr=None, grad_norm=0.5)
    log.emit("alert", rule="spike", level="warning", message="m", advice="a")
    log.close()
    written = [json.loads(line) for line in log.path.read_text().splitlines()]
    assert got == written
    assert list(written[0]) == ["t", "kind", "step", "loss", "grad_norm"]  # order as given, None left out
    assert written[0]["loss"] == "nan"


# -- a UserError across the process boundary --------------------------------------------------


@pytest.mark.slow
def test_a_trainer_process_reports_its_user_error_as_message_and_fix(
    tiny_model, write_config, tmp_path, capsys
):
    from cockpit.launch import job_end
    from engine.cli.launcher import _say_end, launch

    cfg = write_config(tiny_model("qwen3"), max_steps=2)
    bogus = tmp_path / "no-such-checkpoint"
    job = launch(cfg, resume=str(bogus), output=tmp_path / "launch.log")
    assert job.wait(300) == 2
    end = job_end(job)
    assert end.status == "error"
    assert end.message.startswith(str(bogus)) and "fix" not in end.message
    assert "--resume" in end.fix
    error = end.user_error()
    assert isinstance(error, UserError) and (error.message, error.fix) == (end.message, end.fix)
    said = (tmp_path / "launch.log").read_text()  # the trainer's own stderr
    assert f"{end.message}\n  fix: {end.fix}" in said and "Traceback" not in said
    capsys.readouterr()  # building the tiny model printed progress
    _say_end(read_events(job.events).records[-1])  # the headless launcher's last words
    err = capsys.readouterr().err
    assert err == f"error: {end.message}\n  fix: {end.fix}\n"


# -- the demo run writes what main wrote ------------------------------------------------------

TIMING = {"t", "setup_s", "tokens_per_s", "s_per_step", "elapsed_s", "rows_per_s", "eta_s", "pid", "workers"}
"""Values that measure time (or name this process): they differ from run to run."""


def comparable(lines: list[dict]) -> list[dict]:
    """The records with timing values left out; GPU samples and the prepare progress records are
    written every few seconds, so how many there are depends on the machine's speed."""
    out = []
    for r in lines:
        if r["kind"] == "gpu" or (r["kind"] == "prepare" and not (r.get("done") or r.get("started"))):
            continue
        # the prepared data's folder is named by a hash of (among others) the data file's path
        out.append(
            {
                k: ("<prepared>" if k in ("path", "prepared") and "prepared-data" in str(v) else v)
                for k, v in r.items()
                if k not in TIMING
            }
        )
    return out


# Written since the vendored log was made, on purpose: the demo probes identity at each save
# (issue 32: `probe`, and `probing` while it runs, issue 33) and an eval's loss by _category
# (issue 32). Everything else must still be what main wrote.
ADDED_KINDS = {"probe", "probing"}
ADDED_FIELDS = {"eval": {"by_category"}, "save": {"probes_skipped"}}


def since_vendored(record: dict) -> dict | None:
    if record["kind"] in ADDED_KINDS:
        return None
    added = ADDED_FIELDS.get(record["kind"], set())
    return {k: v for k, v in record.items() if k not in added}


def approx_floats(record: dict) -> dict:
    return {k: pytest.approx(v, rel=1e-5) if isinstance(v, float) else v for k, v in record.items()}


@pytest.mark.slow
def test_the_demo_run_writes_the_records_main_wrote(tmp_path):
    from conftest import cli

    from engine.config.bundled import demo_config_path

    old = raw_lines(OLD_LOG)
    first = old[: next(i for i, r in enumerate(old) if r["kind"] == "end") + 1]  # the 30-step run
    r = cli("train", demo_config_path(), "--headless", "--max-steps", "30", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    new = [since_vendored(x) for x in raw_lines(tmp_path / "logs" / "demo" / "events.jsonl")]
    new = [x for x in new if x is not None]
    got, want = comparable(new), comparable(first)
    assert [list(x) for x in got] == [list(x) for x in want]  # the same fields, in the same order
    # The same values; floats to 1e-5 relative: the vendored log was made with the machine's
    # default torch threads, the suite runs with OMP_NUM_THREADS=1, which moves the last bits.
    assert [approx_floats(x) for x in got] == want
