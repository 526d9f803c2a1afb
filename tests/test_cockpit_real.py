"""The real cockpit on a real tiny model: keys act on training in its child process, chat reaches
the model being trained, a hangup saves and ends the run."""

from __future__ import annotations

import argparse
import fcntl
import os
import pty
import struct
import sys
import termios
import threading
from pathlib import Path

import pytest
from cockpit_script import text_of

from cockpit.launch import build_launched_app, stop_job
from cockpit.widgets.confirm_quit import ConfirmQuit
from engine.run.events import dedupe_steps, read_events
from tests.wait import exited, wait_for

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parent.parent


def train_args(config: Path, **over) -> argparse.Namespace:
    args = dict(config=str(config), headless=False, resume="auto", max_steps=None, run_name=None)
    args.update(logs_dir=None, force=False, allow_world_size_change=False, machine_rank=None, **over)
    return argparse.Namespace(**args)


def events_of(path: Path) -> list[dict]:
    return read_events(path).records if path.exists() else []


def steps_in(records: list[dict]) -> list[int]:
    return [r["step"] for r in records if r["kind"] == "step"]


@pytest.mark.slow
async def test_keys_pause_save_and_quit_a_real_run(tiny_model, write_config, tmp_path):
    from engine.chat.chat import LIVE, Done, Request, Settings

    config = write_config(tiny_model("qwen3"), num_epochs=100, max_steps=400)
    log = tmp_path / "logs" / "test" / "events.jsonl"
    app = build_launched_app(train_args(config))
    assert app.source.job.pid != os.getpid() and app.source.job.nproc == 1
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(lambda: len(steps_in(events_of(log))) >= 3, 180, pilot=pilot)

            await pilot.press("p")
            await wait_for(lambda: any(r["kind"] == "paused" for r in events_of(log)), 60, pilot=pilot)
            frozen = steps_in(events_of(log))
            paused_at = next(r["step"] for r in events_of(log) if r["kind"] == "paused")
            assert frozen[-1] == paused_at, "the screen must show the step the run is paused at"
            # The paused trainer answers a question (it polls while it waits); no step goes by meanwhile.
            answered: list = []
            quick = Request("Hi", [LIVE], Settings(temperature=0, max_new_tokens=1))
            app.pane_widgets["chat"].backend.submit(quick, answered.append)
            await wait_for(lambda: any(isinstance(e, Done) for e in answered), 60, pilot=pilot)
            assert steps_in(events_of(log)) == frozen, "steps went on while paused"
            # the screen follows the log on its own timer: wait for it to draw what the log says
            await wait_for(lambda: "paused" in text_of(app.query_one("#progress").content), 10, pilot=pilot)

            await pilot.press("p")
            await wait_for(lambda: len(steps_in(events_of(log))) >= len(frozen) + 2, 60, pilot=pilot)
            assert any(r["kind"] == "resumed" for r in events_of(log))

            await pilot.press("s")
            await wait_for(lambda: any(r["kind"] == "save" for r in events_of(log)), 60, pilot=pilot)
            await wait_for(lambda: app.query_one("#checkpoints").row_count >= 1, 10, pilot=pilot)

            await pilot.press("q")
            assert isinstance(app.screen, ConfirmQuit)
            await pilot.press("y")
            await wait_for(lambda: not app.is_running, 120, pilot=pilot)
    finally:
        code = stop_job(app)
    assert code == 0
    records = events_of(log)
    last_step = dedupe_steps(records)[-1]["step"]
    saves = [r for r in records if r["kind"] == "save"]
    assert saves[-1]["step"] == last_step < 400
    assert records[-1]["kind"] == "end" and records[-1]["status"] == "stopped"
    assert (Path(saves[-1]["path"]) / "leviathan.json").exists()


def run_in_pty(argv: list[str], cwd: Path, env: dict, size=(40, 120)) -> tuple[int, int, list[bytes]]:
    """Start argv on a new pseudo-terminal; returns (pid, master fd, output chunks being read)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: its own session, the pty as controlling terminal
        try:
            os.chdir(cwd)
            os.execvpe(argv[0], argv, env)
        finally:
            os._exit(127)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", size[0], size[1], 0, 0))
    out: list[bytes] = []

    def read() -> None:
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            out.append(chunk)

    threading.Thread(target=read, daemon=True).start()
    return pid, fd, out


class Pid:
    """``poll()`` for a child started with ``pty.fork``: its exit code once it has ended."""

    def __init__(self, pid: int, out: list[bytes]) -> None:
        self.pid, self.code, self.out = pid, None, out

    def poll(self) -> int | None:
        if self.code is None:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.code = os.waitstatus_to_exitcode(status)
        return self.code

    def output(self) -> str:
        return b"".join(self.out).decode(errors="replace")


@pytest.mark.slow
def test_hangup_saves_the_current_step_and_ends_the_run(tiny_model, write_config, tmp_path):
    """An SSH drop outside tmux: the terminal hangs up under a training cockpit."""
    config = write_config(tiny_model("qwen3"), num_epochs=100, max_steps=400)
    log = tmp_path / "logs" / "test" / "events.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TERM": "xterm-256color"}
    pid, fd, out = run_in_pty([sys.executable, "-m", "cockpit.cli", "train", str(config)], tmp_path, env)
    child = Pid(pid, out)
    try:
        wait_for(lambda: len(steps_in(events_of(log))) >= 3, 180, "3 steps", running=child)
        assert b"Progress" in b"".join(out)  # the cockpit is on screen
        os.close(fd)  # hang up: the kernel sends SIGHUP to the cockpit's session
        fd = -1
        wait_for(exited(child), 120, "the cockpit to exit after the hangup")
    finally:
        if fd >= 0:
            os.close(fd)
        if child.poll() is None:  # still running after a failure: do not leave it behind
            os.kill(pid, 9)
            os.waitpid(pid, 0)
    records = events_of(log)
    last_step = dedupe_steps(records)[-1]["step"]
    saves = [r for r in records if r["kind"] == "save"]
    assert saves and saves[-1]["step"] == last_step < 400
    assert records[-1]["kind"] == "end" and records[-1]["status"] == "stopped"
    assert (Path(saves[-1]["path"]) / "leviathan.json").exists()


@pytest.mark.slow
async def test_cockpit_drives_a_two_process_job(tiny_model, write_config, tmp_path, monkeypatch):
    """`train CONFIG --nproc 2` in the cockpit: accelerate launch, rank 0's log, keys reach every rank."""
    from cockpit.launch import build_launched_app

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    config = write_config(tiny_model("qwen3"), num_epochs=100, max_steps=400)
    app = build_launched_app(train_args(config), 2)
    job = app.source.job
    log = job.events
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(lambda: len(steps_in(events_of(log))) >= 3, 240, pilot=pilot)
            await pilot.press("s")
            await wait_for(lambda: any(r["kind"] == "save" for r in events_of(log)), 120, pilot=pilot)
            await pilot.press("q")
            await wait_for(lambda: isinstance(app.screen, ConfirmQuit), pilot=pilot)
            await pilot.press("y")
            await wait_for(lambda: any(r["kind"] == "end" for r in events_of(log)), 180, pilot=pilot)
    finally:
        if job.poll() is None:
            job.control("stop")
        assert job.wait(timeout=180) == 0
    records = events_of(log)
    start = next(r for r in records if r["kind"] == "start")
    assert start["world_size"] == 2
    steps = [r["step"] for r in dedupe_steps(records)]
    assert steps == list(range(1, steps[-1] + 1))  # written once, by rank 0
    controls = [r for r in records if r["kind"] == "control"]
    sent = {
        (x.get("command") if isinstance(x, dict) else x) for c in controls for x in c.get("commands") or []
    }
    assert "save" in sent  # the stop shows as the end record below
    assert all(len(set(c["rank_steps"])) == 1 for c in controls if c.get("rank_steps"))  # same step on both
    end = records[-1]
    assert end["kind"] == "end" and end["status"] == "stopped"
    saves = [r["step"] for r in records if r["kind"] == "save"]
    assert saves[-1] == end["step"]


@pytest.mark.slow
async def test_chat_reaches_the_model_being_trained(tiny_model, write_config, tmp_path):
    """The chat pane's backend sends questions to the trainer's process: answered at a step
    boundary while training, and at once while paused (no step goes by)."""
    from engine.chat.chat import LIVE, Done, Request, Settings, Started

    config = write_config(tiny_model("qwen3"), num_epochs=100, max_steps=400)
    log = tmp_path / "logs" / "test" / "events.jsonl"
    app = build_launched_app(train_args(config))
    running, paused = [], []
    greedy = Settings(temperature=0, max_new_tokens=6)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            backend = app.pane_widgets["chat"].backend
            await wait_for(lambda: len(steps_in(events_of(log))) >= 2, 180, pilot=pilot)
            assert backend.targets()[0].key == LIVE
            backend.submit(Request("Hello", [LIVE], greedy), running.append)
            await wait_for(lambda: any(isinstance(e, Done) for e in running), 60, pilot=pilot)

            await pilot.press("p")
            await wait_for(lambda: any(r["kind"] == "paused" for r in events_of(log)), 60, pilot=pilot)
            frozen = steps_in(events_of(log))
            backend.submit(Request("Hi", [LIVE, "base"], greedy), paused.append)
            await wait_for(lambda: any(isinstance(e, Done) for e in paused), 60, pilot=pilot)
            assert steps_in(events_of(log)) == frozen, "a step went by while paused"

            await pilot.press("q")
            await pilot.press("y")
            await wait_for(lambda: not app.is_running, 120, pilot=pilot)
    finally:
        assert stop_job(app) == 0
    for events, lanes in ((running, 1), (paused, 2)):
        started = next(e for e in events if isinstance(e, Started))
        done = next(e for e in events if isinstance(e, Done))
        assert started.step is not None and started.step >= 2
        assert len(done.answers) == lanes and all(a.tokens > 0 for a in done.answers), done
    assert backend.targets()[0].key != LIVE  # the live weights are gone with the trainer
    chats = [r for r in events_of(log) if r["kind"] == "chat"]
    assert len(chats) == 2 and chats[1]["step"] == frozen[-1]
