"""A shared logs folder: run-folder files that are symlinks, another user's, or writable by
group/others are refused by name before anything is written through them (real files, chown to
another uid as root)."""

from __future__ import annotations

import os

import pytest

from engine.errors import UserError
from engine.run.control import Controls
from engine.run.control_file import ControlFile, append_command
from engine.run.events import RunLog
from tests.conftest import cli_here

NOBODY = 65534


@pytest.fixture
def run_dir(tmp_path):
    d = tmp_path / "logs" / "test"
    d.mkdir(parents=True)
    return d


def test_a_symlinked_run_log_is_refused_and_its_target_untouched(run_dir, tmp_path):
    secret = tmp_path / "root-only.txt"
    secret.write_text("mine\n")
    os.chmod(secret, 0o600)
    os.symlink(secret, run_dir / "events.jsonl")
    with pytest.raises(UserError, match=r"events.jsonl: a symlink where the run writes its own file"):
        RunLog(run_dir / "events.jsonl")
    assert secret.read_text() == "mine\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_another_users_files_are_refused(run_dir):
    for name in ("events.jsonl", "control.jsonl"):
        (run_dir / name).write_text("")
        os.chown(run_dir / name, NOBODY, NOBODY)
    with pytest.raises(UserError, match=rf"events.jsonl: owned by another user \(uid {NOBODY}\)"):
        RunLog(run_dir / "events.jsonl")
    with pytest.raises(UserError, match="control.jsonl: owned by another user"):
        ControlFile(run_dir / "control.jsonl")
    with pytest.raises(UserError, match="control.jsonl: owned by another user"):
        append_command(run_dir, "pause")
    assert (run_dir / "control.jsonl").read_text() == ""


def test_a_control_file_others_can_write_is_refused(run_dir):
    path = run_dir / "control.jsonl"
    path.write_text("")
    os.chmod(path, 0o666)
    with pytest.raises(UserError, match=r"control.jsonl: group or others may write it \(mode 666\)") as e:
        ControlFile(path)
    assert "chmod go-w" in str(e.value)
    os.chmod(path, 0o644)
    reader = ControlFile(path, from_start=True)
    append_command(run_dir, "pause")
    controls = Controls()
    assert [c["command"] for c in reader.poll(controls)] == ["pause"] and controls.pause.is_set()


def test_train_refuses_a_planted_run_log_with_exit_2(run_dir, tmp_path, tiny_model, write_config):
    cfg = write_config(tiny_model("qwen3"), max_steps=1)
    target = tmp_path / "elsewhere.txt"
    target.write_text("")
    os.symlink(target, run_dir / "events.jsonl")
    r = cli_here("train", cfg, "--headless")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "events.jsonl: a symlink" in r.stderr and target.read_text() == ""
