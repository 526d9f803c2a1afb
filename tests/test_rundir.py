"""The run folder's layout named in one place, and the control-file protocol on top of it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from engine.run import control_file
from engine.run.control import Controls
from engine.run.rundir import RunDir
from engine.run.runlock import lock_holder, lock_run


def test_run_dir_names_each_file_of_the_layout(tmp_path):
    rd = RunDir(str(tmp_path))  # a str is taken too
    assert rd == RunDir(tmp_path) and rd.path == tmp_path
    names = {p.relative_to(tmp_path).as_posix() for p in (rd.events, rd.config, rd.control, rd.lock)}
    assert names == {"events.jsonl", "config.yaml", "control.jsonl", ".lock"}
    assert (rd.chat.name, rd.eval.name, rd.checklist.name) == ("chat", "eval", "checklist.json")
    logs = (rd.launch_log, rd.jobs_log, rd.cockpit_log, rd.chat_live)
    assert [p.relative_to(tmp_path).as_posix() for p in logs] == [
        "launch.log",
        "jobs.log",
        "cockpit-output.log",
        "chat/live",
    ]
    assert not rd.is_run()
    rd.events.write_text("")
    assert rd.is_run()
    assert Path(rd) == tmp_path  # os.fspath works


def test_the_control_file_is_the_run_folders(tmp_path):
    assert control_file.control_path(tmp_path) == RunDir(tmp_path).control


def test_chat_commands_need_the_trainers_chat_job(tmp_path):
    class Job:
        cancelled = None

        def cancel(self, why):
            self.cancelled = why

    made = []

    def chat_job(cmd):
        made.append(cmd)
        return Job()

    control_file.append_command(tmp_path, "chat", base="b", request={"id": 1})
    c = Controls()
    refused = control_file.ControlFile(RunDir(tmp_path).control, from_start=True)
    assert refused.poll(c) == [] and not made  # several processes: no chat_job, refused
    taken = control_file.ControlFile(RunDir(tmp_path).control, from_start=True, chat_job=chat_job)
    assert [x["command"] for x in taken.poll(c)] == ["chat"] and made[0]["request"] == {"id": 1}


HOLD = """
import sys
from engine.run.runlock import OutputLock, RunLock
with RunLock(sys.argv[1]), OutputLock(sys.argv[2], sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_lock_readers_name_the_live_holder_and_its_run(tmp_path):
    run, out = tmp_path / "logs" / "my run", tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run), str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline() == "held\n"
        assert lock_holder(run) == proc.pid and lock_holder(out) == proc.pid
        assert lock_run(out) == str(run.resolve())  # a run folder's name may hold a space
        assert lock_run(run) is None
    finally:
        proc.communicate("", timeout=60)
    assert lock_holder(run) is None and lock_holder(out) is None and lock_run(out) is None
