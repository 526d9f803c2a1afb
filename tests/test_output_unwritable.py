"""output_dir made read-only mid-run (a real read-only bind mount over it after the first save;
the trainer's open lock file keeps a plain ``remount,ro`` from working): the run
pauses with an alert like a full disk and goes on when it is writable again; headless it exits 2
and the same command resumes. No traceback, no checkpoint lost."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest

from engine.config.config import load_config
from engine.errors import UserError
from engine.run import checkpoints
from engine.run.control import Controls
from engine.run.events import read_events
from engine.train.train import run
from tests.wait import wait_for


def _read_only(out: Path) -> None:
    subprocess.run(["mount", "--bind", str(out), str(out)], check=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", str(out)], check=True)


def _writable(out: Path) -> None:
    subprocess.run(["umount", "-l", str(out)], capture_output=True)


def _records(tmp_path: Path) -> list[dict]:
    path = tmp_path / "logs" / "test" / "events.jsonl"
    return read_events(path).records if path.exists() else []


def _start(config, controls, out):
    def read_only_after_first_save(r):
        if r["kind"] == "save" and r["step"] == 2:
            _read_only(out)

    box: dict = {}

    def target():
        try:
            box["result"] = run(config, controls=controls, listeners=[read_only_after_first_save])
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, box


@pytest.mark.slow
@pytest.mark.parametrize("operator", [True, False])
def test_read_only_output_dir_pauses_or_exits_2_and_goes_on(tiny_model, write_config, tmp_path, operator):
    out = tmp_path / "out"
    probe = subprocess.run(["mount", "--bind", str(tmp_path), str(tmp_path)], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {probe.stderr.decode().strip()}")
    _writable(tmp_path)
    cfg = write_config(tiny_model("qwen3"), max_steps=6, save_steps=2, guard={"disk_poll_s": 0.2})
    config = load_config(cfg)[0]
    controls = Controls()
    controls.operator_present = operator
    thread, box = _start(config, controls, out)
    try:
        if operator:
            wait_for(
                lambda: any(
                    r["kind"] == "paused" and r.get("reason") == "output_unwritable"
                    for r in _records(tmp_path)
                ),
                180,
                "the run to pause on the read-only output_dir",
            )
            assert thread.is_alive()
            _writable(out)  # the operator makes it writable again
        thread.join(timeout=300)
    finally:
        _writable(out)
    recs = _records(tmp_path)
    (alert,) = [r for r in recs if r["kind"] == "alert" and r.get("rule") == "output_unwritable"]
    assert (
        alert["step"] == 4
        and "Read-only file system" in alert["message"]
        and "nothing was deleted" in alert["message"]
    )
    assert [c.step for c in checkpoints.scan(out)[0]][:1] == [2]
    if operator:
        assert "error" not in box, box.get("error")
        assert box["result"].status == "completed" and box["result"].step == 6
        assert any(r["kind"] == "resumed" and r["reason"] == "output_dir writable again" for r in recs)
        return
    assert isinstance(box.get("error"), UserError), box
    assert "make output_dir writable again" in str(box["error"]) and "resumes from checkpoint-2" in str(
        box["error"]
    )
    result = run(config, controls=Controls(), resume="auto")  # the same command, once writable
    assert result.status == "completed" and result.step == 6
