"""Probes never hold the run hostage: a real one-process run as the cockpit starts it
(``engine.dist_main``, commands through the control file), with the identity suite on save.

A pause written before the first step holds the run at step 1, where a manual save is not
probed (not a scheduled save). A pause written while the step-2 probe runs cuts it short
(``probe`` record ``cut: pause``) and the run pauses at step 2 itself, the step just saved (not a
step later); a save asked there says it is saved already. A stop written while the step-4 probe
runs cuts that one too and the run ends at step 4, on the checkpoint just written.
``probing`` records say what runs meanwhile.
"""

from __future__ import annotations

import json

import pytest
import yaml

from engine.cli.launcher import launch
from engine.evaluate.evaluate import IDENTITY_PROMPTS
from engine.run import checkpoints
from engine.run.events import read_events
from tests.conftest import base_config
from tests.wait import wait_record

pytestmark = pytest.mark.slow


def _probing(step: int):
    return lambda r: r["kind"] == "probing" and r["step"] == step


def _paused(step: int):
    return lambda r: r["kind"] == "paused" and r["step"] == step


@pytest.fixture(scope="module")
def cut_run(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("cut")
    config = root / "cut.yaml"
    cfg = base_config(
        tiny_model("qwen3"),
        max_steps=40,
        save_steps=2,
        output_dir=str(root / "out"),
        logs_dir=str(root / "logs"),
        run_name="cut",
        # One prompt a batch, long answers: the suite outlasts the time a command takes to land.
        evaluation={"on_save": ["identity"], "batch_size": 1, "max_new_tokens": 256},
    )
    config.write_text(yaml.safe_dump(cfg))
    job = launch(config, 1)
    try:
        job.control("pause")  # read from the start: held at step 1
        wait_record(job.events, _paused(1), running=job)
        job.control("save")  # at once, at the paused step: not a scheduled save
        wait_record(job.events, lambda r: r["kind"] == "save", running=job)
        job.control("resume")
        wait_record(job.events, _probing(2), running=job)
        job.control("pause")
        wait_record(job.events, _paused(2), running=job)
        job.control("save")  # step 2 is saved already: a note, no second save
        wait_record(
            job.events, lambda r: r["kind"] == "note" and "saved already" in r.get("message", ""), running=job
        )
        job.control("resume")
        wait_record(job.events, _probing(4), running=job)
        job.control("stop", reason="test")
        code = job.wait(180)
    finally:
        if job.poll() is None:
            job.stop("test cleanup")
            job.wait(60)
    return root, code, read_events(job.events).records, (job.run_dir / "launch.log").read_text()


def test_a_pause_or_stop_cuts_a_probe_short(cut_run):
    root, code, records, _ = cut_run
    assert code == 0
    probes = [r for r in records if r["kind"] == "probe"]
    assert [(r["step"], r.get("cut")) for r in probes] == [(2, "pause"), (4, "stop")]
    for r in probes:
        assert r["planned"] == len(IDENTITY_PROMPTS) and r["total"] < r["planned"]
        saved = json.loads(
            (root / "logs" / "cut" / "eval" / f"identity-checkpoint-{r['step']}.json").read_text()
        )
        assert saved["status"] == "cut" and len(saved["items"]) == r["total"]
    # A cut suite's score is not the checkpoint's: none went to the marker.
    marker = json.loads((root / "out" / "checkpoint-2" / checkpoints.MARKER).read_text())
    assert "identity" not in (marker.get("probe") or {})
    # Held at the probe's own step: not a step later, not after a whole suite.
    assert [r["step"] for r in records if r["kind"] == "paused"] == [1, 2]
    end = records[-1]
    assert end["kind"] == "end" and end["status"] == "stopped" and end["step"] == 4
    assert max(r["step"] for r in records if r["kind"] == "step") == 4  # no step trained after the stop


def test_only_scheduled_saves_are_probed(cut_run):
    _, _, records, _ = cut_run
    saves = [r for r in records if r["kind"] == "save"]
    by_step = {r["step"]: r.get("probes_skipped") for r in saves}
    assert by_step == {1: "not a scheduled save", 2: None, 4: None}  # the stop's checkpoint: step 4's
    notes = [r["message"] for r in records if r["kind"] == "note" and r["step"] == 2]
    assert "checkpoint-2 is saved already" in notes  # the save asked while paused at the probed step
    probed = {r["step"] for r in records if r["kind"] in ("probe", "probing")}
    assert probed == {2, 4}


def test_probing_records_count_up_to_the_cut(cut_run):
    _, _, records, _ = cut_run
    for step in (2, 4):
        seen = [r for r in records if r["kind"] == "probing" and r["step"] == step]
        assert seen[0]["i"] == 0 and seen[0].get("seconds_left") is None  # no pace known yet
        assert all(r["n"] == len(IDENTITY_PROMPTS) and r["suite"] == "identity" for r in seen)
        assert [r["i"] for r in seen] == sorted(r["i"] for r in seen)
        cut = next(r for r in records if r["kind"] == "probe" and r["step"] == step)
        assert seen[-1]["i"] <= cut["total"]


def test_no_warning_floods_the_run_output(cut_run):
    """The run's stdout and stderr (launch.log) hold no line more than a few times: a warning
    printed per layer or per step (as Liger's RMSNorm under torch.compile once was, 5,298 times)
    is a bug at its cause, not something to filter."""
    from collections import Counter

    *_, output = cut_run
    counts = Counter(line.strip() for line in output.splitlines() if line.strip())
    flooded = {line: n for line, n in counts.items() if n > 3}
    assert not flooded, flooded
