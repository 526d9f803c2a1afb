"""``leviathan-cockpit [train] CONFIG`` and ``leviathan-cockpit attach RUN_DIR``.

Training in the cockpit: the config is loaded and checked before the screen opens (bad
input exits 2 with its message, as headless does), then the trainer starts in a child
process of its own (``engine.cli.launcher``) and the app follows its run log and sends it
commands. Two interpreters, so the UI never holds the trainer's GIL: measured in one
process, drawing the screen cost training 15-22% on an H100 (benchmarks/ui_overhead.py).
Whatever ends the app - ``q`` then ``y``, a crash of the UI, SIGHUP from a dropped SSH
connection, SIGTERM - the run stops at the next step boundary, saves a checkpoint of that
step and writes its ``end`` record before the cockpit exits. The trainer is in its own
session: a hangup reaches it only as that stop, and a cockpit killed outright leaves it
training (``attach`` finds it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cockpit.run_log_path import find_run_log
from engine.errors import UserError
from engine.run import records
from engine.run.rundir import run_config_raw

HANGUP_GRACE_S = 10.0
"""After a hangup and the end of training, how long the UI gets to close before the process exits."""


def _say(text: str) -> None:
    with contextlib.suppress(OSError):  # the terminal is gone (SIGHUP): the run log says it all
        print(text, file=sys.stderr, flush=True)


def need_terminal(what: str) -> None:
    """The cockpit draws on a terminal; without one (nohup, a pipe, CI) say what to use instead."""
    streams = (sys.stdin, sys.__stderr__)
    if not all(getattr(f, "isatty", lambda: False)() for f in streams):
        raise UserError(
            f"{what} needs a terminal, and this process has none (stdin or stderr is not a tty)",
            "use `leviathan-cockpit train CONFIG --headless` for scripts, nohup and CI; "
            "run the cockpit inside tmux to keep it across SSH drops",
        )


def install_stop_signals(app) -> Callable[[], None]:
    """SIGHUP / SIGTERM: stop safely at the next step boundary. Returns a function that undoes it.

    SIGTERM keeps the screen until the checkpoint is saved; a second SIGTERM ends the
    process at once, as its sender asked. SIGHUP means the terminal is gone: output goes to
    /dev/null from then on (a write to a hung-up terminal fails and would wedge the UI's
    writer), the UI closes, training saves and ends, and a watchdog makes sure the process
    exits once that is done. Further SIGHUPs are ignored (a hangup often comes twice).
    """
    controls = app.source.controls

    def handler(signum, frame):
        controls.request_stop(f"signal {signal.Signals(signum).name}")
        if signum != signal.SIGHUP:
            signal.signal(signum, signal.SIG_DFL)
            return
        signal.signal(signum, signal.SIG_IGN)
        _detach_from_terminal()
        _exit_after_training(app)
        with contextlib.suppress(RuntimeError):  # no loop: the app has not started or has ended
            asyncio.get_running_loop().call_soon_threadsafe(app.exit)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGHUP, signal.SIGTERM)}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


def _detach_from_terminal() -> None:
    fd = os.open(os.devnull, os.O_WRONLY)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _exit_after_training(app) -> None:
    """After a hangup: once training has saved and ended, the process must not linger."""

    def watchdog() -> None:
        job = getattr(app.source, "job", None)
        if job is not None:
            job.wait()
        time.sleep(HANGUP_GRACE_S)
        os._exit(0)  # the run log is closed and the checkpoint is complete; nothing is lost

    threading.Thread(target=watchdog, name="hangup-watchdog", daemon=True).start()


def panes(chat_backend=None) -> dict:
    """The chat and checklist panes; the chat pane only where there is a model to talk to."""
    from cockpit.checklist_pane import ChecklistPane

    found = {"checklist": ChecklistPane}
    if chat_backend is not None:
        from cockpit.chat_pane import ChatPane

        found["chat"] = lambda: ChatPane(chat_backend)
    return found


def launched_chat(job, config, app):
    """Chat on the model the job trains (one process): questions go to its training thread."""
    if job.nproc != 1:  # no one rank holds the whole model: checkpoints, on a model of our own
        return attached_chat(config.model_dump(mode="json"), job.run_dir)
    from engine.chat.chat_bridge import ProcessBackend

    return ProcessBackend(
        job,
        base=config.base_model,
        output_dir=config.output_dir,
        run_dir=job.run_dir,
        chat_config=config.chat,
        ended=lambda: app.ended,
    )


def checked_config(args) -> tuple:
    """The config the trainer will train on, with its notes, and every start-up problem at once
    (engine.train.preflight): bad input exits 2 here, before a screen opens or a process starts.
    Loaded and checked once: the launcher hands this very config to the trainer."""
    from engine.cli.headless import check_before_start, load_for_cli

    config, notes, path = load_for_cli(args)
    check_before_start(args, config, path)
    return config, notes


def build_launched_app(args, nproc: int = 1, checked: tuple | None = None):
    """The cockpit over a training job it starts in child processes: ``python -m
    engine.dist_main`` for one process, ``accelerate launch`` for several. The UI shares no
    interpreter with the trainer, so it cannot slow it."""
    from cockpit.app import CockpitApp
    from cockpit.source import LaunchedSource
    from engine.cli.launcher import launch_from_args

    checked = checked if checked is not None else checked_config(args)
    config = checked[0]
    job = launch_from_args(args, nproc, checked=checked)
    source = LaunchedSource(job, run_name=job.run_dir.name, config=config.model_dump(mode="json"))
    app = CockpitApp(source)
    app.panes = panes(launched_chat(job, config, app))
    return app


def train_in_cockpit(args, nproc: int = 1) -> int:
    checked = checked_config(args)
    need_terminal("the cockpit")
    from cockpit import themes

    themes.chosen()  # a bad LEVIATHAN_THEME is refused before training starts
    app = build_launched_app(args, nproc, checked)
    app.remember_theme = True
    restore = install_stop_signals(app)
    try:
        app.run()
    finally:
        restore()
        stop_job(app)
    return job_exit(app)


def stop_job(app) -> int:
    """However the app ended, the job stops safely (a checkpoint of its current step) before we return."""
    job = app.source.job
    if job.poll() is None and not app.ended:  # a job whose run log has ended is only exiting
        if not app.source.controls.stop.is_set():
            app.source.controls.request_stop("cockpit closed")
        _say("stopping training at the next step boundary and saving a checkpoint...")
    return job.wait()


def job_exit(app) -> int:
    """The exit code, and what ended the run in a line: 0 done or stopped, 2 bad input, 1 failed."""
    job = app.source.job
    code = job.wait()
    end = job_end(job)
    status, message = end.status or "ended", end.message
    if code == 2 and message:
        raise end.user_error()  # the trainer's own message and fix, as it printed them
    if app.return_code not in (None, 0):
        _say(f"the cockpit crashed; training was stopped and saved. Run log: {job.events}")
        return 1
    if code != 0:
        _say(f"training {status}: {message or f'exit code {code}'}; see {job.log_path or job.events}")
        return 1
    _say(f"{status}; run log {job.events}")
    return 0


def job_end(job) -> records.End:
    """The job's ``end`` record of this start (an empty one while there is none)."""
    from engine.cli.launcher import records_since

    found = (records.decode(r) for r in reversed(records_since(job.events, job.events_offset)))
    return next((r for r in found if isinstance(r, records.End)), records.End(kind="end"))


# -- attach -----------------------------------------------------------------------------


def build_attach_app(target: str | Path, *others: str | Path, **app_kw):
    """The cockpit on ``target``'s run log; ``others`` are overlaid with it in the Compare tab,
    which the cockpit opens on when there are any. Every target is checked before the screen opens."""
    from cockpit.app import CockpitApp
    from cockpit.source import FileSource

    logs, problems = [], []
    for t in (target, *others):
        try:
            logs.append(find_run_log(t))
        except UserError as e:
            problems.append(e)
    if problems:
        if len(problems) == 1:
            raise problems[0]
        raise UserError("\n".join(str(e) for e in problems), "give run folders (logs/<run-name>)")
    run_dir = logs[0].parent
    config = run_config_raw(run_dir)
    source = FileSource(logs[0], run_name=run_dir.name, run_dir=run_dir, config=config)
    app = CockpitApp(source, panes=panes(attached_chat(config, run_dir)), **app_kw)
    app.compare_runs = [log.parent for log in logs[1:]]
    if others:
        app.start_tab = "compare"
    return app


def attached_chat(config: dict, run_dir: Path):
    """Chat beside a run in another process: a model of our own, loaded on the first question."""
    base, output_dir = config.get("base_model"), config.get("output_dir")
    if not base or not output_dir:
        return None
    from engine.chat.chat_backend import StandaloneBackend

    return StandaloneBackend(base, run_dir=run_dir, output_dir=output_dir)


def attach(args) -> int:
    app = build_attach_app(*args.run_dir)
    need_terminal("attach")
    from cockpit import themes

    themes.chosen()  # a bad LEVIATHAN_THEME: refused with the names there are
    app.remember_theme = True
    app.run()
    if app.source.bad_lines:
        _say(f"{app.source.bad_lines} torn or foreign line(s) skipped in {app.source.path}")
    return 0 if app.return_code in (None, 0) else 1
