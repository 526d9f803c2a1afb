"""Kill -9 mid-run, then resume: one record per step, exact losses, torn checkpoints ignored."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from engine.config.config import load_config
from engine.run import checkpoints
from engine.run.events import dedupe_steps, read_events
from engine.train.train import run
from tests.conftest import cli, cli_here
from tests.wait import wait_record

STEPS = 24


def start(cfg: Path, *extra) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cockpit.cli", "train", str(cfg), "--headless", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def losses(log: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in dedupe_steps(read_events(log).records)}


@pytest.mark.slow
def test_kill_9_then_resume_continues_exactly(tiny_model, write_config, tmp_path):
    common = dict(max_steps=STEPS, save_steps=5, learning_rate=0.003)
    ref_cfg = write_config(
        tiny_model("qwen3"), name="ref.yaml", run_name="ref", output_dir=str(tmp_path / "ref-out"), **common
    )
    ref = run(load_config(ref_cfg)[0])
    ref_losses = losses(ref.run_dir / "events.jsonl")

    cfg = write_config(tiny_model("qwen3"), **common)
    log = tmp_path / "logs" / "test" / "events.jsonl"
    for kill_after in (7, 14):  # twice in a row
        proc = start(cfg)
        wait_record(log, lambda r, k=kill_after: r.get("kind") == "step" and r["step"] >= k, running=proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    proc = start(cfg)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()[-2000:]

    records = read_events(log).records
    steps = [r["step"] for r in dedupe_steps(records)]
    assert steps == list(range(1, STEPS + 1))
    resumes = [r for r in records if r["kind"] == "resume"]
    assert [r["from_step"] for r in resumes] == [5, 10]
    got = losses(log)
    for s in range(1, STEPS + 1):
        assert got[s] == pytest.approx(ref_losses[s], abs=1e-6), s
    # token counters continue where the checkpoint left them
    last = dedupe_steps(records)[-1]
    ref_last = dedupe_steps(read_events(ref.run_dir / "events.jsonl").records)[-1]
    assert last["tokens"] == ref_last["tokens"]
    assert records[-1]["kind"] == "end" and records[-1]["status"] == "completed"


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def hf_checkpoint(folder: Path, step: int) -> Path:
    """A checkpoint folder as HF Trainer / Axolotl leave it: no leviathan.json."""
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8, "peft_type": "LORA"}))
    (folder / "adapter_model.safetensors").write_bytes(os.urandom(2048))
    return folder


def alerts(log: Path, rule: str) -> list[str]:
    return [r["message"] for r in read_events(log).records if r["kind"] == "alert" and r["rule"] == rule]


@pytest.mark.slow
def test_kill_9_mid_save_sets_the_torn_folder_aside_and_leaves_others_alone(
    tiny_model, write_config, tmp_path
):
    cfg = write_config(tiny_model("qwen3"), max_steps=6, save_steps=2)
    out, log = tmp_path / "out", tmp_path / "logs" / "test" / "events.jsonl"
    # Another trainer's checkpoints in the same output_dir, one at a step this run saves too.
    hf_checkpoint(out / "checkpoint-6", 6)
    hf_checkpoint(out / "checkpoint-100", 100)
    kill = {"LEVIATHAN_FAULT": "kill@save:4"}  # SIGKILL halfway through writing optimizer.pt
    r = cli("train", cfg, "--headless", env=kill)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    torn = out / "checkpoint-4"
    assert (torn / checkpoints.SAVING).exists() and not (torn / checkpoints.MARKER).exists()
    # One of ours, complete, whose marker is then damaged (a truncated leviathan.json).
    shutil.copytree(out / "checkpoint-2", out / "checkpoint-3")
    marker = out / "checkpoint-3" / checkpoints.MARKER
    marker.write_text(marker.read_text()[:40])
    others = {n: digest(out / n) for n in ("checkpoint-3", "checkpoint-6", "checkpoint-100")}
    first_torn = digest(torn)

    r = cli("train", cfg, "--headless", env=kill)  # killed at the same moment again
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    aside = out / checkpoints.TORN_DIR / "checkpoint-4"
    assert digest(aside) == first_torn  # moved aside, not deleted: no complete save since
    assert (out / "checkpoint-4" / checkpoints.SAVING).exists()
    (moved,) = alerts(log, "torn_checkpoint")
    assert str(aside) in moved

    r = cli_here("train", cfg, "--headless")  # the same command, no fault
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert len(alerts(log, "torn_checkpoint")) == 2 and not (out / checkpoints.TORN_DIR).exists()
    assert [c.step for c in checkpoints.scan(out)[0]] == [2, 4, 6]
    assert digest(out / "checkpoint-3") == others["checkpoint-3"]  # left where it was
    assert digest(out / "checkpoint-100") == others["checkpoint-100"]
    (renamed,) = out.glob("checkpoint-6.set-aside*")  # not written over by our checkpoint-6
    assert digest(renamed) == others["checkpoint-6"]
    named = alerts(log, "foreign_checkpoint")
    assert any("checkpoint-3" in m and "damaged" in m for m in named)
    assert any("checkpoint-100" in m and "another trainer" in m for m in named)
    assert any("checkpoint-6" in m and "renamed" in m for m in named)
    records = read_events(log)
    assert records.bad_lines == []
    assert [r["step"] for r in dedupe_steps(records.records)] == list(range(1, 7))
    assert [r["from_step"] for r in records.records if r["kind"] == "resume"] == [2, 2]


def test_a_killed_writer_never_glues_records(tmp_path):
    from engine.run.events import RunLog

    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"t":1,"kind":"step","step":1,"loss":2.0}\n{"t":2,"kind":"st')
    RunLog(path).emit("resume", step=1)
    contents = read_events(path)
    assert [r["kind"] for r in contents.records] == ["step", "resume"]
    assert contents.bad_lines == [2]


@pytest.mark.slow
def test_resume_never_refuses_existing_checkpoints(tiny_model, write_config):
    cfg = write_config(tiny_model("qwen3"), max_steps=3, save_steps=3)
    assert cli_here("train", cfg, "--headless").returncode == 0
    r = cli_here("train", cfg, "--headless", "--resume", "never")
    assert r.returncode == 2 and "already holds checkpoints" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_changed_lora_rank_is_refused_with_the_differences(tiny_model, write_config):
    assert (
        cli_here(
            "train", write_config(tiny_model("qwen3"), max_steps=3, save_steps=3), "--headless"
        ).returncode
        == 0
    )
    r = cli_here(
        "train", write_config(tiny_model("qwen3"), max_steps=6, save_steps=3, lora_r=4), "--headless"
    )
    assert r.returncode == 2
    assert "lora_r: 8 -> 4" in r.stderr


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly(tiny_model, write_config, tmp_path):
    cfg = write_config(tiny_model("qwen3"), max_steps=5000, save_steps=1000)
    log = tmp_path / "logs" / "test" / "events.jsonl"
    proc = start(cfg)
    wait_record(log, lambda r: r.get("kind") == "step" and r["step"] >= 3, running=proc)
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
    records = read_events(log).records
    end = records[-1]
    assert end["kind"] == "end" and end["status"] == "stopped"
    saves = [r for r in records if r["kind"] == "save"]
    assert saves and saves[-1]["step"] == end["step"] == dedupe_steps(records)[-1]["step"]
    assert (tmp_path / "out" / f"checkpoint-{end['step']}" / "leviathan.json").is_file()
    meta = json.loads((tmp_path / "out" / f"checkpoint-{end['step']}" / "leviathan.json").read_text())
    assert meta["step"] == end["step"]


@pytest.mark.slow
def test_force_fresh_sets_old_checkpoints_aside_and_the_last_step_is_saved(
    tiny_model, write_config, tmp_path
):
    # No save_steps at all: the final step is still kept.
    cfg = write_config(tiny_model("qwen3"), max_steps=4)
    assert cli_here("train", cfg, "--headless").returncode == 0
    assert checkpoints.latest(tmp_path / "out").step == 4
    cfg = write_config(tiny_model("qwen3"), max_steps=2)
    r = cli_here("train", cfg, "--headless", "--resume", "never", "--force")
    assert r.returncode == 0, r.stderr
    assert checkpoints.latest(tmp_path / "out").step == 2  # the old step-4 checkpoint no longer outranks it
    moved = list((tmp_path / "out").glob("superseded-*/checkpoint-4/leviathan.json"))
    assert len(moved) == 1


@pytest.mark.slow
def test_corrupt_files_in_the_newest_checkpoints_fall_back_to_one_that_loads(
    tiny_model, write_config, tmp_path
):
    cfg = write_config(tiny_model("qwen3"), max_steps=6, save_steps=2)
    out, log = tmp_path / "out", tmp_path / "logs" / "test" / "events.jsonl"
    assert cli_here("train", cfg, "--headless").returncode == 0
    # Bit rot in checkpoint-6's weights (same size), a short optimizer.pt in checkpoint-4.
    weights = out / "checkpoint-6" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    optim = out / "checkpoint-4" / "optimizer.pt"
    optim.write_bytes(optim.read_bytes()[:1000])
    kept = {n: digest(out / n) for n in ("checkpoint-4", "checkpoint-6")}

    r = cli_here("train", cfg, "--headless", "--resume", str(out / "checkpoint-6"))
    assert r.returncode == 2 and "adapter_model.safetensors has changed" in r.stderr
    assert "Traceback" not in r.stderr

    r = cli_here("train", cfg, "--headless", "--max-steps", "8")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    bad = alerts(log, "corrupt_checkpoint")
    assert len(bad) == 2
    assert "checkpoint-6" in bad[0] and "adapter_model.safetensors has changed" in bad[0]
    assert "checkpoint-4" in bad[1] and "optimizer.pt is 1,000 bytes" in bad[1]
    records = read_events(log)
    assert [x["from_step"] for x in records.records if x["kind"] == "resume"] == [2]
    assert [x["step"] for x in dedupe_steps(records.records)] == list(range(1, 9))
    # nothing deleted: the damaged folders are kept under another name
    assert digest(out / "checkpoint-6.corrupt") == kept["checkpoint-6"]
    assert digest(out / "checkpoint-4.corrupt") == kept["checkpoint-4"]
    assert [c.step for c in checkpoints.scan(out)[0]] == [2, 4, 6, 8]
    assert all(checkpoints.verify(c) == [] for c in checkpoints.scan(out)[0])
