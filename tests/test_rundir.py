"""The run folder's layout named in one place, and the control-file protocol on top of it."""

from __future__ import annotations

from pathlib import Path

from engine.run import control_file
from engine.run.control import Controls
from engine.run.rundir import RunDir
from engine.train import dist


def test_run_dir_names_each_file_of_the_layout(tmp_path):
    rd = RunDir(str(tmp_path))  # a str is taken too
    assert rd == RunDir(tmp_path) and rd.path == tmp_path
    names = {p.relative_to(tmp_path).as_posix() for p in (rd.events, rd.config, rd.control, rd.lock)}
    assert names == {"events.jsonl", "config.yaml", "control.jsonl", ".lock"}
    assert (rd.chat.name, rd.eval.name, rd.checklist.name) == ("chat", "eval", "checklist.json")
    assert not rd.is_run()
    rd.events.write_text("")
    assert rd.is_run()
    assert Path(rd) == tmp_path  # os.fspath works


def test_the_control_protocol_is_the_same_from_dist_and_control_file(tmp_path):
    assert dist.append_command is control_file.append_command and dist.ControlFile is control_file.ControlFile
    assert dist.control_path(tmp_path) == RunDir(tmp_path).control


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
