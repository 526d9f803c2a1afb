"""Post-training steps from the cockpit, on a real tiny run: merge, quantize, push as background jobs.

The checkpoint table's M and the checklist's g open the ship menu; its choice runs the engine's
own merge / quantize / push in a job thread, shown live in the jobs panel; the checklist
re-measures when a job ends.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from cockpit_script import launched_app, text_of
from conftest import train_tiny

from cockpit.checklist_pane import ChecklistPane
from cockpit.launch import build_attach_app, panes
from cockpit.messages import JobEnded
from cockpit.widgets.checkpoints_table import CheckpointsTable
from cockpit.widgets.jobs_panel import JobsPanel
from cockpit.widgets.ship_menu import ShipMenu
from engine.run import lineage
from engine.run.events import read_events
from tests.wait import wait_for

pytestmark = pytest.mark.anyio
SIZE = (120, 40)
JOB_S = 120.0


@pytest.fixture
def trained(tiny_model, tmp_path):
    """A finished tiny run of its own (checkpoint-2 and checkpoint-4): tests write beside it."""
    train_tiny(tiny_model("qwen3"), tmp_path, "ship", max_steps=4, save_steps=2)
    return tmp_path / "logs" / "ship", tmp_path / "out"


def jobs_text(app) -> str:
    return text_of(app.query_one(JobsPanel).content, width=300)


def item(app, item_id: str):
    return next((i for i in app.query_one(ChecklistPane).items if i.id == item_id), None)


async def ship_menu(pilot) -> ShipMenu:
    await wait_for(lambda: isinstance(pilot.app.screen, ShipMenu), pilot=pilot)
    return pilot.app.screen


async def job_ended(pilot, n: int = 1) -> None:
    panel = pilot.app.query_one(JobsPanel)
    await wait_for(lambda: len(panel.entries) >= n and panel.entries[n - 1].announced, JOB_S, pilot=pilot)


async def on_checklist_row(pilot, item_id: str) -> None:
    await pilot.press("3")
    pane = pilot.app.query_one(ChecklistPane)
    await wait_for(lambda: pane.items, 30, pilot=pilot)
    table = pane.query_one("#checklist-table")
    table.focus()
    table.move_cursor(row=table.get_row_index(item_id))
    await pilot.pause()


def loads_as_a_model(folder: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        model(input_ids=torch.tensor([tok("Who are you?")["input_ids"]]))
    assert tok.chat_template


@pytest.mark.slow
async def test_merge_the_selected_checkpoint_from_the_table(trained):
    run_dir, out = trained
    app = build_attach_app(run_dir)  # attached, read-only: the steps need no training controls
    seen = []
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        table = app.query_one(CheckpointsTable)
        await wait_for(lambda: table.row_count == 2, 30, pilot=pilot)
        assert not app.query_one(JobsPanel).display  # hidden until a job starts
        table.focus()
        table.move_cursor(row=1)  # newest first: checkpoint-2
        await pilot.press("M")
        menu = await ship_menu(pilot)
        assert menu.defaults.checkpoint.name == "checkpoint-2"
        merged = out.with_name("out-merged")
        assert menu.query_one("#ship-merged-out").value == str(merged)
        await pilot.press("enter")

        await job_ended(pilot)
        entry = app.query_one(JobsPanel).entries[0]
        assert entry.job.state == "done", entry.job.error
        assert f"✓ merge checkpoint-2  {merged}: 1 shard(s)" in jobs_text(app)
        assert app.query_one(JobsPanel).display
        # The checklist re-measures when the job ends (not at its next 5 s round): the merged item passes.
        assert any(isinstance(m, JobEnded) for m in seen)
        await wait_for(lambda: item(app, "merged") and item(app, "merged").status == "pass", 3, pilot=pilot)
        assert item(app, "merged").value == str(merged)

        # Again on the same checkpoint: the menu proposes a free folder and refuses an existing one.
        await pilot.press("1")
        table.focus()
        await pilot.press("M")
        menu = await ship_menu(pilot)
        field = menu.query_one("#ship-merged-out")
        assert field.value == str(out.with_name("out-merged-checkpoint-2"))
        field.value = str(merged)
        await pilot.press("enter")
        await wait_for(
            lambda: "already exists" in text_of(menu.query_one("#ship-error").content), pilot=pilot
        )
        assert isinstance(app.screen, ShipMenu)
        assert len(app.query_one(JobsPanel).entries) == 1
        await pilot.press("escape")

    loads_as_a_model(merged)
    mask = os.umask(0)
    os.umask(mask)
    for f in merged.iterdir():  # readable as the umask says, not safetensors' 600
        assert f.stat().st_mode & 0o777 == 0o666 & ~mask, f
    from transformers.utils import logging

    assert not logging.is_progress_bar_enabled()  # no shard bars over the screen or after the exit
    info = lineage.read_info(merged)
    assert info["kind"] == "merged" and info["step"] == 2 and Path(info["run_dir"]) == run_dir.resolve()
    (record,) = lineage.step_outputs(run_dir, "merge")
    assert record["output"] == str(merged.resolve()) and record["checkpoint"].endswith("checkpoint-2")


@pytest.mark.slow
async def test_merge_from_the_checklist_then_quantize_without_cuda(trained):
    run_dir, out = trained
    app = build_attach_app(run_dir)
    async with app.run_test(size=SIZE) as pilot:
        await on_checklist_row(pilot, "quantized")
        await pilot.press("g")
        menu = await ship_menu(pilot)
        await pilot.press("enter")  # nothing merged yet
        await wait_for(
            lambda: "merge a checkpoint first" in text_of(menu.query_one("#ship-error").content), pilot=pilot
        )
        await pilot.press("escape")

        await on_checklist_row(pilot, "merged")
        assert item(app, "merged").status == "pending"
        await pilot.press("g")
        menu = await ship_menu(pilot)
        assert menu.defaults.checkpoint.name == "checkpoint-4"  # no eval loss: the newest
        await pilot.press("enter")
        await job_ended(pilot)
        assert app.query_one(JobsPanel).entries[0].job.state == "done"
        await wait_for(lambda: item(app, "merged").status == "pass", 30, pilot=pilot)
        merged = out.with_name("out-merged")
        assert item(app, "merged").value == str(merged)

        if torch.cuda.is_available():
            return  # quantize on a GPU is the benchmark's; here: the message without one
        await on_checklist_row(pilot, "quantized")
        await pilot.press("g")
        menu = await ship_menu(pilot)
        assert menu.query_one("#ship-model-dir").value == str(merged)
        await pilot.press("enter")
        await job_ended(pilot, 2)
        job = app.query_one(JobsPanel).entries[1].job
        assert job.state == "failed" and job.user_error and job.traceback is None
        shown = jobs_text(app)
        assert "✗ quantize out-merged  failed: nf4 quantization runs on an NVIDIA GPU with CUDA" in shown
        assert "fix: run `leviathan-cockpit quantize`" in shown and "Traceback" not in shown
        await pilot.pause(0.3)
        assert app.is_running
        assert item(app, "quantized").status == "pending"
    assert not out.with_name("out-merged-nf4").exists()


@pytest.mark.slow
async def test_push_dry_run_first_then_upload_fails_clearly(trained, monkeypatch, tmp_path):
    from engine.ship.merge import merge

    run_dir, out = trained
    merged = merge(out / "checkpoint-4", out.with_name("out-merged")).output
    before = sorted(p.name for p in merged.iterdir())
    monkeypatch.setenv("HF_TOKEN", "")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    app = build_attach_app(run_dir)
    async with app.run_test(size=SIZE) as pilot:
        await on_checklist_row(pilot, "hub_upload")
        await pilot.press("g")
        menu = await ship_menu(pilot)
        await pilot.press("enter")  # push dry run without a repo id
        await wait_for(
            lambda: "push needs the Hub repository" in text_of(menu.query_one("#ship-error").content),
            pilot=pilot,
        )
        menu.query_one("#ship-repo-id").value = "someone/leviathan-tiny"
        await pilot.press("down", "enter")  # upload, asked before any dry run: a dry run comes first
        await job_ended(pilot)
        entry = app.query_one(JobsPanel).entries[0]
        assert entry.label == "push dry run someone/leviathan-tiny" and entry.job.state == "done"
        files = [n for n, _ in entry.job.result.files]
        assert sorted(files) == sorted([n for n, _ in lineage.folder_files(merged)] + ["README.md"])
        assert f"would upload {len(files)} files" in jobs_text(app) and "model.safetensors" in jobs_text(app)
        await pilot.pause(0.3)
        assert item(app, "hub_upload").status == "pending"  # a dry run ticks nothing

        await pilot.press("g")
        menu = await ship_menu(pilot)
        menu.query_one("#ship-repo-id").value = "someone/leviathan-tiny"
        await pilot.press("down", "enter")  # now the upload itself: no token, no network here
        await job_ended(pilot, 2)
        job = app.query_one(JobsPanel).entries[1].job
        assert job.state == "failed" and job.user_error, job.error
        assert "Hugging Face" in job.error and "Traceback" not in jobs_text(app)
        await pilot.pause(0.3)
        assert item(app, "hub_upload").status == "pending"
    assert sorted(p.name for p in merged.iterdir()) == before
    assert not lineage.step_outputs(run_dir, "push")


@pytest.mark.slow
async def test_merge_while_training_says_it_loads_a_second_base(trained):
    """A live run in this cockpit (a scripted job here): the merge runs beside it, never on it."""
    run_dir, out = trained
    records = read_events(run_dir / "events.jsonl").records
    records = [r for r in records if r["kind"] != "end"]  # still training
    app = launched_app(run_dir.parent / "live", records, config={"output_dir": str(out)})
    app.panes = panes()
    async with app.run_test(size=SIZE) as pilot:
        table = app.query_one(CheckpointsTable)
        await wait_for(lambda: table.row_count == 2 and "training" in app.sub_title, 30, pilot=pilot)
        table.focus()
        await pilot.press("M")
        menu = await ship_menu(pilot)
        assert "second copy of the base model" in text_of(menu.query_one("#ship-warning").content)
        await pilot.press("enter")
        panel = app.query_one(JobsPanel)
        await wait_for(lambda: panel.entries, 10, pilot=pilot)
        assert panel.entries[0].note.startswith("loads a second copy of the base")
        await job_ended(pilot)
        assert panel.entries[0].job.state == "done" and app.training_alive
        # Closing the app stops the scripted job (as it stops a real run).
    assert (out.with_name("out-merged") / "config.json").is_file()
