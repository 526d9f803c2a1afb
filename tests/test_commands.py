"""Commands reach a trainer through one source (engine.train.commands), polled by the one callback:
the control file is read by every kind of run, a torn line or a missing newline never swallows a
command, a save or an eval asked while paused runs at once, and SIGTERM saves like SIGHUP."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from engine.run.control import Controls
from engine.run.control_file import ControlFile, append_command, control_path
from engine.run.events import read_events
from tests.test_resume import start
from tests.wait import wait_for, wait_record


def _raw(run_dir: Path, text: str) -> None:
    """Bytes appended the way a careless writer does it (no newline check, maybe no newline)."""
    with open(control_path(run_dir), "a") as f:
        f.write(text)


def _names(cmds: list[dict]) -> list[str]:
    return [c["command"] for c in cmds]


def test_a_file_left_without_its_newline_does_not_swallow_the_next_command(tmp_path):
    reader = ControlFile(control_path(tmp_path), from_start=True)
    c = Controls()
    _raw(tmp_path, '{"command": "pause"}')  # printf without \n
    assert _names(reader.poll(c)) == ["pause"] and c.pause.is_set()
    _raw(tmp_path, '{"command": "stop", "reason": "script"}\n')  # glued onto it
    assert _names(reader.poll(c)) == ["stop"] and c.stop_reason == "script"


def test_a_torn_line_does_not_swallow_the_next_command(tmp_path):
    reader = ControlFile(control_path(tmp_path), from_start=True)
    c = Controls()
    _raw(tmp_path, '{"command": "sa')  # a writer killed mid-line
    assert reader.poll(c) == []
    _raw(tmp_path, '{"command": "eval"}\n{"command": "save"}\n')
    assert _names(reader.poll(c)) == ["eval", "save"]
    # a torn line with a whole line after it, both read at once
    _raw(tmp_path, '{"command": "chat", "request": {"id": 3}, "ba{"command": "stop"}\n')
    assert _names(reader.poll(c)) == ["stop"] and c.stop.is_set()
    _raw(tmp_path, "garbage\n\x00\x00{}\n")  # not commands: nothing, no error
    assert reader.poll(c) == []


def test_append_command_starts_its_own_line_after_a_torn_one(tmp_path):
    _raw(tmp_path, '{"command": "pau')
    append_command(tmp_path, "save")
    lines = control_path(tmp_path).read_text().split("\n")
    assert lines[0] == '{"command": "pau' and json.loads(lines[1])["command"] == "save" and lines[2] == ""
    append_command(tmp_path, "eval")  # after a whole line: no empty line in between
    assert len(control_path(tmp_path).read_text().split("\n")) == 4


@pytest.mark.slow
def test_headless_one_process_obeys_its_control_file(tiny_model, write_config, tmp_path):
    """The README's recipe for scripts on a single-process `train --headless`: pause, a save and an
    eval while paused (done at once, still paused), resume behind a torn line, then stop."""
    cfg = write_config(
        tiny_model("qwen3"), max_steps=5000, save_steps=1000, val_set_size=0.1, eval_steps=1000
    )
    run_dir = tmp_path / "logs" / "test"
    log = run_dir / "events.jsonl"
    proc = start(cfg)
    try:
        # As soon as the command has claimed the run (before torch loads), commands are its own.
        wait_for(lambda: control_path(run_dir).exists(), 60, running=proc)
        assert not log.exists() or not [r for r in read_events(log).records if r["kind"] == "step"]
        _raw(run_dir, '{"command": "pause"}')  # no newline: taken all the same
        paused = wait_record(log, lambda r: r.get("kind") == "paused", running=proc)
        at = paused["step"]
        append_command(run_dir, "save")
        saved = wait_record(log, lambda r: r.get("kind") == "save", running=proc)
        assert saved["step"] == at and (Path(saved["path"]) / "leviathan.json").is_file(), saved
        append_command(run_dir, "eval")  # (a new best eval_loss then saves this step again: save_best)
        evaluated = wait_record(log, lambda r: r.get("kind") == "eval", running=proc)
        assert evaluated["step"] == at
        kinds = [r["kind"] for r in read_events(log).records if r.get("step", 0) >= at]
        assert "resumed" not in kinds and not [r for r in read_events(log).records if r.get("step", 0) > at]
        _raw(run_dir, '{"command": "resu')  # a writer killed mid-line, then a whole line glued on
        _raw(run_dir, '{"command": "resume"}\n')
        wait_record(log, lambda r: r.get("kind") == "step" and r["step"] > at, running=proc)
        _raw(run_dir, '{"command": "stop"}\n')  # echo '{"command": "stop"}' >> control.jsonl
        assert proc.wait(timeout=120) == 0, proc.stderr.read()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    records = read_events(log).records
    end = records[-1]
    assert end["kind"] == "end" and end["status"] == "stopped" and end["step"] > at
    assert (tmp_path / "out" / f"checkpoint-{end['step']}" / "leviathan.json").is_file()
    kinds = [r["kind"] for r in records]
    assert kinds.count("paused") == 1 and kinds.count("resumed") == 1


@pytest.mark.slow
def test_sigterm_to_the_cockpits_trainer_saves_and_ends_cleanly(tiny_model, write_config, tmp_path):
    """The trainer the cockpit starts (one process, engine.dist_main): SIGTERM, as `kill PID` sends
    it, saves a checkpoint at the next step and writes `end` (status stopped), as SIGHUP does."""
    from engine.cli.launcher import launch

    cfg = write_config(tiny_model("qwen3"), max_steps=5000, save_steps=1000)
    job = launch(cfg, 1, run_name="test", logs_dir=tmp_path / "logs")
    try:
        wait_record(job.events, lambda r: r.get("kind") == "step" and r["step"] >= 2, running=job)
        os.kill(job.pid, signal.SIGTERM)
        assert job.wait(timeout=120) == 0, job.log_path.read_text()[-2000:]
    finally:
        if job.poll() is None:
            job.terminate(grace_s=5)
    end = read_events(job.events).records[-1]
    assert end["kind"] == "end" and end["status"] == "stopped", end
    assert (tmp_path / "out" / f"checkpoint-{end['step']}" / "leviathan.json").is_file()


def test_stall_watch_says_stalled_once_and_back_once(tmp_path, monkeypatch):
    """What `train --headless --nproc N` prints while rank 0 is stopped: real files, their mtimes."""
    from engine.run.heartbeat import StallWatch, age, stall_after
    from engine.run.rundir import RunDir

    monkeypatch.setenv("LEVIATHAN_HEARTBEAT_S", "1")
    folder = RunDir(tmp_path)
    watch = StallWatch(tmp_path, since=1000.0)
    assert watch.check(now=1010.0) is None and age(tmp_path) == float("inf")  # nothing yet
    folder.events.write_text("{}\n")
    os.utime(folder.events, (900.0, 900.0))  # an earlier job's log: not this job's sign
    assert watch.check(now=1010.0) is None
    os.utime(folder.events, (1001.0, 1001.0))
    assert watch.check(now=1001.0 + stall_after() / 2) is None
    line = watch.check(now=1001.0 + stall_after() + 1)
    assert line.startswith(f"stalled: no record or heartbeat from the trainer for {stall_after() + 1:.0f} s")
    assert watch.check(now=1001.0 + stall_after() + 2) is None  # said once
    folder.heartbeat.touch()
    os.utime(folder.heartbeat, (1020.0, 1020.0))
    assert watch.check(now=1020.5).startswith("the trainer is back") and age(tmp_path, now=1021.0) == 1.0


def _counts() -> tuple[int, int]:
    from engine.config.config import VALIDATIONS
    from engine.train.preflight import CHECKS

    return VALIDATIONS[0], CHECKS[0]


@pytest.mark.slow
def test_headless_start_loads_and_checks_its_config_once(tiny_model, write_config):
    from tests.conftest import cli_here

    cfg = write_config(tiny_model("qwen3"), max_steps=2)
    before = _counts()
    r = cli_here("train", cfg, "--headless")
    assert r.returncode == 0, r.stderr[-2000:]
    after = _counts()
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)  # main before this change: (1, 2)


@pytest.mark.slow
def test_cockpit_start_loads_once_and_the_trainer_takes_that_config(tiny_model, write_config, tmp_path):
    """One cockpit start: the UI validates the config and runs the setup checks once (before: twice
    each, and the trainer a third time); the trainer trains on the config the UI checked, even
    when the user's file changes (here: breaks) while it starts."""
    from cockpit.launch import build_launched_app
    from tests.test_cockpit_real import train_args

    cfg = write_config(tiny_model("qwen3"), max_steps=5000, save_steps=1000, learning_rate=0.002)
    before = _counts()
    app = build_launched_app(train_args(cfg))
    job = app.source.job
    try:
        after = _counts()
        assert (after[0] - before[0], after[1] - before[1]) == (1, 1)
        cfg.write_text("learning_rate: [this is not\n")  # the trainer never reads it again
        wait_record(job.events, lambda r: r.get("kind") == "step" and r["step"] >= 1, running=job)
        job.stop("test")
        assert job.wait(120) == 0, job.log_path.read_text()[-2000:]
    finally:
        if job.poll() is None:
            job.terminate(grace_s=5)
    import yaml

    assert yaml.safe_load((job.run_dir / "config.yaml").read_text())["learning_rate"] == 0.002
    assert read_events(job.events).records[-1]["status"] == "stopped"
