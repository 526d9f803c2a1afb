"""Long-run safety around a run folder: SIGHUP (headless), a second writer refused while readers
follow the log, harmless config changes recorded on resume, failed starts leave the folder as it was."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import threading
from pathlib import Path

import pytest
import yaml

from engine.config.config import load_config
from engine.run.events import dedupe_steps, follow, read_events
from engine.train.train import run
from tests.conftest import DEMO_DATA, cli_here
from tests.test_resume import start
from tests.wait import wait_record


def log_of(tmp_path: Path) -> Path:
    return tmp_path / "logs" / "test" / "events.jsonl"


@pytest.mark.slow
def test_sighup_headless_saves_and_ends_cleanly(tiny_model, write_config, tmp_path):
    cfg = write_config(tiny_model("qwen3"), max_steps=5000, save_steps=1000)
    log = log_of(tmp_path)
    proc = start(cfg)
    wait_record(log, lambda r: r.get("kind") == "step" and r["step"] >= 3, running=proc)
    os.kill(proc.pid, signal.SIGHUP)  # the SSH session went away
    assert proc.wait(timeout=120) == 0, proc.stderr.read()[-2000:]
    records = read_events(log).records
    end = records[-1]
    assert end["kind"] == "end" and end["status"] == "stopped"
    assert (tmp_path / "out" / f"checkpoint-{end['step']}" / "leviathan.json").is_file()
    # the same command resumes from it
    r = cli_here("train", cfg, "--headless", "--max-steps", str(end["step"] + 2))
    assert r.returncode == 0, r.stderr[-2000:]
    records = read_events(log).records
    assert [x["from_step"] for x in records if x["kind"] == "resume"] == [end["step"]]


@pytest.mark.slow
def test_second_writer_is_refused_while_readers_follow(tiny_model, write_config, tmp_path):
    cfg = write_config(tiny_model("qwen3"), max_steps=5000, save_steps=1000)
    log = log_of(tmp_path)
    proc = start(cfg)
    try:
        wait_record(log, lambda r: r.get("kind") == "step" and r["step"] >= 2, running=proc)
        seen: list[dict] = []
        stop = threading.Event()

        def reader():  # what `attach` does: follow the log, read-only
            for r in follow(log, stop, poll_s=0.05):
                seen.append(r)

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        second = cli_here("train", cfg, "--headless")
        assert second.returncode == 2
        refused = ("already being trained", "is in use by a running trainer")  # lock, or the start-up check
        assert any(w in second.stderr for w in refused) and f"pid {proc.pid}" in second.stderr
        assert "attach" in second.stderr and "Traceback" not in second.stderr
        before = max(r["step"] for r in read_events(log).records if r["kind"] == "step")
        wait_record(log, lambda r: r.get("kind") == "step" and r["step"] >= before + 2, running=proc)
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
        stop.set()
        t.join(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
    records = read_events(log).records
    # the refused start wrote nothing: one start, one end, both the first trainer's
    assert [r.get("pid") for r in records if r["kind"] == "start"] == [proc.pid]
    assert [r["status"] for r in records if r["kind"] == "end"] == ["stopped"]
    assert read_events(log).bad_lines == []
    # the follower saw the run go on after the refusal, one record per step in order
    steps = [r["step"] for r in seen if r["kind"] == "step"]
    assert steps and max(steps) >= before + 2 and steps == sorted(set(steps))
    assert dedupe_steps(records)[-1]["step"] == records[-1]["step"]


@pytest.mark.slow
def test_harmless_change_on_resume_is_allowed_and_recorded(tiny_model, write_config, tmp_path):
    run(load_config(write_config(tiny_model("qwen3"), max_steps=4, save_steps=2, logging_steps=1))[0])
    cfg = write_config(tiny_model("qwen3"), max_steps=8, save_steps=2, logging_steps=2)
    result = run(load_config(cfg)[0])
    assert result.status == "completed" and result.step == 8
    records = read_events(log_of(tmp_path)).records
    (note,) = [r for r in records if r["kind"] == "note" and "changes" in r]
    assert note["changes"] == {"logging_steps": [1, 2], "max_steps": [4, 8]}
    assert "logging_steps: 1 -> 2" in note["message"]
    resolved = yaml.safe_load((tmp_path / "logs" / "test" / "config.yaml").read_text())
    assert resolved["logging_steps"] == 2
    assert [r["step"] for r in records if r["kind"] == "step" and r["step"] > 4] == [6, 8]


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_failed_starts_leave_the_run_folder_as_it_was(tiny_model, write_config, tmp_path):
    data = tmp_path / "data.jsonl"
    shutil.copy(DEMO_DATA, data)
    model = tiny_model("qwen3")
    good = write_config(model, data=str(data), max_steps=3, save_steps=3)
    assert cli_here("train", good, "--headless").returncode == 0
    run_dir = tmp_path / "logs" / "test"
    config_bytes = (run_dir / "config.yaml").read_bytes()
    log_bytes = (run_dir / "events.jsonl").read_bytes()
    ckpt = digest(tmp_path / "out" / "checkpoint-3")

    # 1. a config that does not validate, aimed at the same run folder: nothing is touched
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace("lora_r: 8", "lora_r: -1"))
    r = cli_here("train", bad, "--headless", "--run-name", "test", "--logs-dir", tmp_path / "logs")
    assert r.returncode == 2 and f"{bad}:" in r.stderr and "Traceback" not in r.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("base_model: [unclosed\n")
    r = cli_here("train", broken, "--headless", "--run-name", "test", "--logs-dir", tmp_path / "logs")
    assert r.returncode == 2 and "not valid YAML" in r.stderr
    assert (run_dir / "config.yaml").read_bytes() == config_bytes
    assert (run_dir / "events.jsonl").read_bytes() == log_bytes

    # 2. a config the checkpoint cannot continue with (refused), then data gone bad (refused)
    r = cli_here(
        "train", write_config(model, data=str(data), max_steps=6, save_steps=3, lora_r=4), "--headless"
    )
    assert r.returncode == 2 and "lora_r: 8 -> 4" in r.stderr
    with open(data, "a") as f:
        f.write('{"messages": [{"role": "user", "content": "hi"}]}\n')
    r = cli_here("train", write_config(model, data=str(data), max_steps=6, save_steps=3), "--headless")
    # a resume on changed data is refused (issue 17.5) from the size alone, before any preparation
    assert (
        r.returncode == 2 and f"{data.resolve()}: size" in r.stderr and "the data changed since" in r.stderr
    )
    assert "Traceback" not in r.stderr
    # config.yaml is still the one the checkpoint was trained with; the log only gained records
    assert (run_dir / "config.yaml").read_bytes() == config_bytes
    after = (run_dir / "events.jsonl").read_bytes()
    assert after.startswith(log_bytes)
    new = read_events(run_dir / "events.jsonl").records[len(read_events_bytes(log_bytes)) :]
    assert [r["status"] for r in new if r["kind"] == "end"] == ["error", "error"]
    assert not any(r["kind"] in ("start", "step", "save", "checkpoint_removed") for r in new)
    assert digest(tmp_path / "out" / "checkpoint-3") == ckpt


def read_events_bytes(data: bytes) -> list:
    return [line for line in data.splitlines() if line.strip()]


@pytest.mark.slow
def test_second_run_into_the_same_output_dir_is_refused(tiny_model, write_config, tmp_path):
    first = write_config(tiny_model("qwen3"), max_steps=5000, save_steps=1000)
    other = write_config(tiny_model("qwen3"), name="other.yaml", run_name="other", max_steps=4, save_steps=1)
    proc = start(first)
    try:
        wait_record(log_of(tmp_path), lambda r: r.get("kind") == "step" and r["step"] >= 2, running=proc)
        r = cli_here("train", other, "--headless")
        assert r.returncode == 2, r.stderr[-2000:]
        assert f"pid {proc.pid}" in r.stderr and str((tmp_path / "logs" / "test").resolve()) in r.stderr
        assert "Traceback" not in r.stderr
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    end = read_events(log_of(tmp_path)).records[-1]
    # only the first run's checkpoint: the refused one saved nothing there
    assert sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*")) == [f"checkpoint-{end['step']}"]
    assert not (tmp_path / "logs" / "other" / "events.jsonl").exists()
    # the lock is gone with its holder: the second run now trains there
    r = cli_here("train", other, "--headless", "--resume", "never", "--force")
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.slow
def test_output_dir_that_is_a_file_is_a_clear_exit_2(tiny_model, write_config, tmp_path):
    taken = tmp_path / "out"
    taken.write_text("not a folder\n")
    r = cli_here("train", write_config(tiny_model("qwen3"), max_steps=2), "--headless")
    assert r.returncode == 2 and f"output_dir {taken}" in r.stderr and "is a file" in r.stderr
    assert "Traceback" not in r.stderr and taken.read_text() == "not a folder\n"
