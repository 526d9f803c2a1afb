"""``checklist`` run from another folder than the trainer's: a run trained with a relative
output_dir (Axolotl's examples use ``./outputs/...``) logs relative paths; the checkpoints are
still found, not called MISSING."""

from __future__ import annotations

import os

from engine.evaluate import checklist
from engine.run.checkpoints import begin_save, mark_complete
from engine.run.events import RunLog
from tests.conftest import cli_here


def _relative_run(root):
    """What a trainer started in ``root`` with ``output_dir: out`` and ``logs_dir: logs`` writes."""
    here = os.getcwd()
    os.chdir(root)
    try:
        log = RunLog("logs/run/events.jsonl")
        log.emit("start", step=0, output_dir="out")
        for step in (1, 2):
            log.emit("step", step=step, loss=2.0 - step / 10)
        for step in (1, 2):
            begin_save(f"out/checkpoint-{step}")
            (root / "out" / f"checkpoint-{step}" / "adapter_model.safetensors").write_bytes(b"x")
            mark_complete(f"out/checkpoint-{step}", {"step": step})
            log.emit("save", step=step, path=f"out/checkpoint-{step}")
        log.close()
    finally:
        os.chdir(here)
    return root / "logs" / "run"


def test_checkpoints_found_from_another_folder(tmp_path):
    (tmp_path / "project").mkdir()
    run_dir = _relative_run(tmp_path / "project")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    here = os.getcwd()
    os.chdir(elsewhere)
    try:
        items = {i.id: i for i in checklist.evaluate(run_dir)}
    finally:
        os.chdir(here)
    assert items["checkpoints_saved"].status == "pass", items["checkpoints_saved"]
    assert items["checkpoints_saved"].value == "2 saved, newest checkpoint-2 complete"
    assert items["all_checkpoints"].status == "pass", items["all_checkpoints"]
    out = cli_here("checklist", run_dir, cwd=elsewhere)
    assert "MISSING" not in out.stdout and "newest checkpoint-2 complete" in out.stdout, out.stdout
