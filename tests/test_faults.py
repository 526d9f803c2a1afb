"""Faults injected for real: NaN in the loss, CUDA out of memory in the forward, a full disk.

NaN and OOM come from ``LEVIATHAN_FAULT`` hooks at the real places (the loss tensor, the
forward); the disk is a real 2 MB tmpfs when one can be mounted (root), and an ``OSError``
raised at the optimizer's write call otherwise (and in the headless test).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine import faults
from engine.config.config import load_config
from engine.run import checkpoints, runstate
from engine.run.control import Controls
from engine.run.events import dedupe_steps, read_events
from engine.train.train import run
from tests.conftest import cli_here, fill_disk
from tests.wait import wait_for, wait_record


@pytest.fixture(autouse=True)
def no_faults_after():
    yield
    faults.reset("")


def records(tmp_path: Path, name: str = "test") -> list[dict]:
    return read_events(tmp_path / "logs" / name / "events.jsonl").records


def since_last_start(recs: list[dict]) -> list[dict]:
    i = max(i for i, r in enumerate(recs) if r["kind"] == "start")
    return recs[i:]


def alerts(recs, rule):
    return [r for r in recs if r["kind"] == "alert" and r["rule"] == rule]


def steps(recs) -> dict[int, dict]:
    return {r["step"]: r for r in recs if r["kind"] == "step"}


# -- NaN / Inf ---------------------------------------------------------------------------------


# adamw_torch: the guard reads the verdict (one sync) and drops the gradients; the fused AdamW
# (CUDA's default) takes it on the device as its found_inf and the guard reads it at the boundary.
@pytest.mark.parametrize("optimizer", ["adamw_torch", "adamw_torch_fused"])
@pytest.mark.slow
def test_nan_step_is_skipped_with_no_update_and_an_alert(optimizer, tiny_model, write_config, tmp_path):
    faults.reset("nan@step:4")
    cfg = write_config(
        tiny_model("qwen3"), max_steps=6, save_steps=1, guard={"nan_patience": 5}, optimizer=optimizer
    )
    result = run(load_config(cfg)[0])
    assert result.status == "completed" and result.step == 6
    recs = records(tmp_path)
    by_step = steps(recs)
    assert by_step[4]["loss"] == "nan" and by_step[4]["grad_norm"] == "nan"  # shown, not filtered
    # finite before and after (a NaN is logged as the string "nan"): the loss sum was reset after it
    assert all(isinstance(by_step[s]["loss"], float) for s in (1, 2, 3, 5, 6))
    (skip,) = [r for r in recs if r["kind"] == "skip"]
    assert skip["step"] == 4
    guard_alert = [a for a in alerts(recs, "nan") if "skipped" in a["message"]]
    assert guard_alert and guard_alert[0]["step"] == 4 and guard_alert[0]["level"] == "critical"
    # No update: the adapter and the optimizer's moments after step 4 are those after step 3.
    out = tmp_path / "out"
    w3 = load_file(out / "checkpoint-3" / "adapter_model.safetensors")
    w4 = load_file(out / "checkpoint-4" / "adapter_model.safetensors")
    w5 = load_file(out / "checkpoint-5" / "adapter_model.safetensors")
    assert all(torch.equal(w3[k], w4[k]) for k in w3)
    assert any(not torch.equal(w4[k], w5[k]) for k in w4)  # step 5 trains again
    o3 = torch.load(out / "checkpoint-3" / "optimizer.pt", weights_only=True)["state"]
    o4 = torch.load(out / "checkpoint-4" / "optimizer.pt", weights_only=True)["state"]
    for i in o3:
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(o3[i][key], o4[i][key])


@pytest.mark.slow
def test_nan_streak_rolls_back_with_lower_lr_and_resumes_keep_it(
    tiny_model, write_config, tmp_path, monkeypatch
):
    from engine.chat import warm as warm_module

    warmed = []  # the decode warm-up (made to count here): once a process, not again at the rollback's train()
    monkeypatch.setattr(warm_module, "warm", lambda model, cuda_only=True: warmed.append(1) or 0.5)
    faults.reset("nan@step:8x3")
    cfg = write_config(tiny_model("qwen3"), max_steps=12, save_steps=3, learning_rate=0.003)
    result = run(load_config(cfg)[0])
    assert result.status == "completed" and result.step == 12
    recs = records(tmp_path)
    assert [r["step"] for r in recs if r["kind"] == "skip"] == [8, 9, 10]
    (rb,) = alerts(recs, "nan_rollback")
    assert rb["step"] == 10 and "checkpoint-6" in rb["message"] and "x0.5" in rb["message"]
    (resume,) = [r for r in recs if r["kind"] == "resume"]
    assert resume["from_step"] == 6 and resume["reason"] == "nan_rollback"
    begins = [r for r in recs if r["kind"] == "train_begin"]
    assert len(begins) == 2 and warmed == [1]
    assert [r.get("decode_warm_s") for r in begins] == [0.5, None]
    # checkpoint-9 of the abandoned stretch was removed, then saved again by the new stretch
    assert any(r["kind"] == "checkpoint_removed" and r["path"].endswith("checkpoint-9") for r in recs)
    curve = dedupe_steps(recs)
    assert [r["step"] for r in curve] == list(range(1, 13))
    assert all(isinstance(r["loss"], float) for r in curve)  # the new stretch is finite
    first = steps(recs[: recs.index(resume)])
    again = steps(recs[recs.index(resume) :])
    assert again[7]["loss"] == pytest.approx(first[7]["loss"], abs=1e-6)  # same batch, same weights
    for s in (7, 8, 9, 10):
        assert again[s]["lr"] == pytest.approx(0.5 * first[s]["lr"], rel=1e-6)
    state = runstate.load(tmp_path / "out")
    assert state.lr_scale == 0.5 and state.rollbacks == 1
    assert (
        json.loads((tmp_path / "out" / "checkpoint-12" / "leviathan.json").read_text())["run_state"][
            "lr_scale"
        ]
        == 0.5
    )
    lr_after = {s: again[s]["lr"] for s in range(7, 13)}

    # A resume from a checkpoint saved after the rollback keeps its (already scaled) schedule...
    faults.reset("")
    import shutil

    shutil.rmtree(tmp_path / "out" / "checkpoint-12")
    run(load_config(cfg)[0])
    resumed = steps(since_last_start(records(tmp_path)))
    assert [r["from_step"] for r in since_last_start(records(tmp_path)) if r["kind"] == "resume"] == [9]
    for s in (10, 11, 12):
        assert resumed[s]["lr"] == pytest.approx(lr_after[s], rel=1e-6)
    # ...and one from before it (a kill before the next save) scales the loaded schedule.
    for c in ("checkpoint-9", "checkpoint-12"):
        shutil.rmtree(tmp_path / "out" / c)
    run(load_config(cfg)[0])
    resumed = steps(since_last_start(records(tmp_path)))
    for s in range(7, 13):
        assert resumed[s]["lr"] == pytest.approx(lr_after[s], rel=1e-6)


@pytest.mark.slow
def test_nan_policy_stop_ends_headless_with_exit_1(tiny_model, write_config, tmp_path):
    cfg = write_config(
        tiny_model("qwen3"), max_steps=8, save_steps=2, guard={"nan_policy": "stop", "nan_patience": 2}
    )
    r = cli_here("train", cfg, "--headless", env={"LEVIATHAN_FAULT": "nan@step:3x2"})
    assert r.returncode == 1, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "ALERT nan_stop" in r.stderr
    recs = records(tmp_path)
    assert recs[-1]["kind"] == "end" and recs[-1]["status"] == "diverged" and recs[-1]["step"] == 4
    (stop,) = alerts(recs, "nan_stop")
    assert "nan_policy is stop" in stop["message"]
    assert checkpoints.latest(tmp_path / "out").step == 2  # nothing saved at the bad step


# -- out of memory -------------------------------------------------------------------------------


@pytest.mark.slow
def test_oom_retries_the_step_at_half_micro_batch_and_resume_keeps_it(tiny_model, write_config, tmp_path):
    common = dict(max_steps=10, save_steps=100, micro_batch_size=4, gradient_accumulation_steps=1)
    ref_cfg = write_config(
        tiny_model("qwen3"), name="ref.yaml", run_name="ref", output_dir=str(tmp_path / "ref-out"), **common
    )
    run(load_config(ref_cfg)[0])
    ref = steps(records(tmp_path, "ref"))

    faults.reset("oom@step:3")
    controls = Controls()

    def stop_at_6(r):
        if r["kind"] == "step" and r["step"] >= 6:
            controls.request_stop("test")

    cfg = write_config(tiny_model("qwen3"), **common)
    result = run(load_config(cfg)[0], controls=controls, listeners=[stop_at_6])
    assert result.status == "stopped"
    stopped_at = result.step
    recs = records(tmp_path)
    (oom,) = alerts(recs, "oom")
    assert oom["step"] == 3 and oom["level"] == "warning"
    assert (oom["micro_batch_size"], oom["gradient_accumulation_steps"]) == (2, 2)
    got = steps(recs)
    assert sorted(got) == list(range(1, stopped_at + 1))  # same step counter: step 3 logged once
    for s in got:
        assert got[s]["loss"] == pytest.approx(ref[s]["loss"], abs=1e-5), s
        assert got[s]["tokens"] == ref[s]["tokens"]
    state = runstate.load(tmp_path / "out")
    assert (state.micro_batch_size, state.gradient_accumulation_steps) == (2, 2)
    marker = json.loads((tmp_path / "out" / f"checkpoint-{stopped_at}" / "leviathan.json").read_text())
    assert marker["run_state"]["micro_batch_size"] == 2

    faults.reset("")
    result = run(load_config(cfg)[0])
    assert result.status == "completed"
    recs = since_last_start(records(tmp_path))
    start = recs[0]
    assert (start["micro_batch_size"], start["gradient_accumulation_steps"]) == (2, 2)
    assert any("as the run state says" in a["message"] for a in alerts(records(tmp_path), "oom"))
    got = steps(recs)
    for s in range(stopped_at + 1, 11):
        assert got[s]["loss"] == pytest.approx(ref[s]["loss"], abs=1e-5), s
    assert got[10]["tokens"] == ref[10]["tokens"]


@pytest.mark.slow
def test_oom_at_micro_batch_1_is_a_clear_exit_2(tiny_model, write_config, tmp_path):
    cfg = write_config(tiny_model("qwen3"), max_steps=4, micro_batch_size=1)
    r = cli_here("train", cfg, "--headless", env={"LEVIATHAN_FAULT": "oom@step:2"})
    assert r.returncode == 2, r.stderr[-2000:]
    assert "out of memory at step 2 with micro batch 1" in r.stderr and "Traceback" not in r.stderr
    assert "gradient_checkpointing" in r.stderr  # the fix
    recs = records(tmp_path)
    assert recs[-1]["kind"] == "end" and recs[-1]["status"] == "error"
    assert alerts(recs, "oom")[0]["level"] == "critical"


def test_bad_fault_spec_is_a_user_error():
    from engine.errors import UserError

    with pytest.raises(UserError):
        faults.parse("nan@save:3")
    assert [(f.kind, f.at, f.times) for f in faults.parse("nan@step:8x3, oom@step:2")] == [
        ("nan", 8, 3),
        ("oom", 2, 1),
    ]
    # a signal inside a phase (tests/interruptmatrix.py lands each there); none where nothing runs
    assert [(f.kind, f.where, f.at) for f in faults.parse("kill@merge:1,term@step:3")] == [
        ("kill", "merge", 1),
        ("term", "step", 3),
    ]
    for bad in ("kill@log:1", "term@nowhere:1"):
        with pytest.raises(UserError, match="PHASE"):
            faults.parse(bad)


# -- disk full -----------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmpfs):
    return tmpfs("2m")


def disk_looks(monkeypatch, disk: Path) -> list:
    """Each free-space look at ``disk`` from now on (``shutil.disk_usage``, still made)."""
    import shutil

    real, looks = shutil.disk_usage, []

    def look(path):
        if Path(path).resolve().is_relative_to(disk.resolve()):
            looks.append(path)
        return real(path)

    monkeypatch.setattr(shutil, "disk_usage", look)
    return looks


def run_in_thread(config, controls, listeners):
    box: dict = {}

    def target():
        try:
            box["result"] = run(config, controls=controls, listeners=listeners)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, box


def wait_logged(tmp_path, pred, timeout=120):
    return wait_record(tmp_path / "logs" / "test" / "events.jsonl", pred, timeout)


@pytest.mark.parametrize("when", ["before_save", "during_write"])
@pytest.mark.slow
def test_full_disk_pauses_keeps_checkpoints_and_goes_on_when_freed(
    when, tiny_model, write_config, tmp_path, small_disk, monkeypatch
):
    # before_save: the free-space check refuses to start the save.
    # during_write: a margin too small lets it start, and the real write fails (ENOSPC).
    margin = 1.25 if when == "before_save" else 0.3
    cfg = write_config(
        tiny_model("qwen3"),
        max_steps=8,
        save_steps=2,
        save_total_limit=1,
        output_dir=str(small_disk / "out"),
        guard={"disk_margin": margin, "disk_poll_s": 0.2},
    )
    filler: list[Path] = []

    def fill_after_first_save(r):
        if r["kind"] == "save" and r["step"] == 2 and not filler:
            size = checkpoints.latest(small_disk / "out").size_bytes
            filler.append(fill_disk(small_disk, leave=size // 2))

    looks = disk_looks(monkeypatch, small_disk)
    controls = Controls()  # the cockpit's: an operator is there to free space
    thread, box = run_in_thread(load_config(cfg)[0], controls, [fill_after_first_save])
    alert = wait_logged(tmp_path, lambda r: r["kind"] == "alert" and r.get("rule") == "disk_full")
    wait_logged(tmp_path, lambda r: r["kind"] == "paused" and r.get("reason") == "disk_full")
    seen = len(looks)
    assert alert["step"] == 4 and alert["level"] == "critical" and "free space" in alert["advice"]
    if when == "during_write":
        assert "failed" in alert["message"] and "partial folder was removed" in alert["message"]
    out = small_disk / "out"
    assert [c.step for c in checkpoints.scan(out)[0]] == [2]  # intact, and retention deleted nothing
    assert not (out / "checkpoint-4").exists() and checkpoints.scan(out)[1] == []
    wait_for(lambda: len(looks) > seen + 1, 60, "the paused run to look at the full disk again")
    assert thread.is_alive()  # still paused: no space yet
    assert not any(r["kind"] == "resumed" for r in records(tmp_path))
    filler[0].unlink()  # the operator frees space
    thread.join(timeout=180)
    assert not thread.is_alive() and "error" not in box, box.get("error")
    assert box["result"].status == "completed" and box["result"].step == 8
    recs = records(tmp_path)
    resumed = [r for r in recs if r["kind"] == "resumed"]
    assert resumed and resumed[0]["step"] == 4 and resumed[0]["reason"] == "disk space freed"
    assert [r["step"] for r in recs if r["kind"] == "save"] == [2, 4, 6, 8]
    assert [c.step for c in checkpoints.scan(out)[0]] == [8]
    assert [r["step"] for r in dedupe_steps(recs)] == list(range(1, 9))


@pytest.mark.slow
def test_full_disk_headless_exits_2_then_the_same_command_resumes(tiny_model, write_config, tmp_path):
    cfg = write_config(tiny_model("qwen3"), max_steps=6, save_steps=2, save_total_limit=1)
    r = cli_here("train", cfg, "--headless", env={"LEVIATHAN_FAULT": "enospc@save:4"})
    assert r.returncode == 2, r.stderr[-2000:]
    assert "disk full" in r.stderr and "Traceback" not in r.stderr
    assert "resumes from checkpoint-2" in r.stderr
    recs = records(tmp_path)
    assert recs[-1]["kind"] == "end" and recs[-1]["status"] == "error" and "disk full" in recs[-1]["message"]
    (alert,) = alerts(recs, "disk_full")
    assert "No space left on device" in alert["message"]
    assert not any(r["kind"] == "checkpoint_removed" for r in recs)
    out = tmp_path / "out"
    assert [c.step for c in checkpoints.scan(out)[0]] == [2] and not (out / "checkpoint-4").exists()

    r = cli_here("train", cfg, "--headless")
    assert r.returncode == 0, r.stderr[-2000:]
    recs = since_last_start(records(tmp_path))
    assert [x["from_step"] for x in recs if x["kind"] == "resume"] == [2]
    assert recs[-1]["status"] == "completed" and checkpoints.latest(out).step == 6


def test_run_state_applies_only_to_the_config_it_came_from(tmp_path):
    from engine.config.config import validate
    from engine.run.events import RunLog
    from engine.train.guard import Guard
    from tests.conftest import base_config

    out = tmp_path / "out"
    state = runstate.RunState(
        micro_batch_size=2, gradient_accumulation_steps=4, derived_from=[4, 2], lr_scale=0.5, rollbacks=1
    )
    out.mkdir()
    runstate.save(out, state)
    log = RunLog(tmp_path / "events.jsonl")

    def effective(resuming, **over):
        config, _ = validate(base_config("m", output_dir=str(out), **over), tmp_path / "c.yaml")
        guard = Guard(config, log, Controls(), out)
        eff = guard.effective_config(config, resuming)
        return (eff.micro_batch_size, eff.gradient_accumulation_steps), runstate.load(out)

    got, st = effective(True, micro_batch_size=4, gradient_accumulation_steps=2)
    assert got == (2, 4) and st.lr_scale == 0.5  # resuming the run it came from: applied
    got, st = effective(False, micro_batch_size=4, gradient_accumulation_steps=2)
    assert got == (2, 4) and (st.lr_scale, st.rollbacks) == (1.0, 0)  # no checkpoint: LR factor reset
    got, st = effective(False, micro_batch_size=1, gradient_accumulation_steps=8)
    assert got == (1, 8) and st.micro_batch_size is None  # the operator chose new values
    log.close()


# -- full logs disk ------------------------------------------------------------------------------


@pytest.mark.slow
def test_full_logs_disk_headless_exits_2_then_the_same_command_resumes(
    tiny_model, write_config, tmp_path, small_disk
):
    from tests.test_resume import start

    logs = small_disk / "logs"
    cfg = write_config(tiny_model("qwen3"), max_steps=5000, save_steps=2, logs_dir=str(logs))
    log = logs / "test" / "events.jsonl"
    proc = start(cfg)
    try:
        wait_record(log, lambda r: r.get("kind") == "save" and r["step"] >= 2, running=proc)
        filler = fill_disk(small_disk)
        assert proc.wait(timeout=120) == 2
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "run log cannot be written" in err and "No space left on device" in err
    assert "Traceback" not in err and "run the same command again" in err
    contents = read_events(log)
    assert contents.bad_lines == [] and log.read_bytes().endswith(b"\n")  # no torn line
    recs = contents.records
    (alert,) = alerts(recs, "disk_full")
    assert alert["where"] == "logs"
    assert recs[-1]["kind"] == "end" and recs[-1]["status"] == "error"
    out = tmp_path / "out"
    saved = [c.step for c in checkpoints.scan(out)[0]]
    logged = max(r["step"] for r in recs if r["kind"] == "step")
    assert saved and max(saved) <= logged  # no checkpoint is newer than the log

    filler.unlink()
    r = cli_here("train", cfg, "--headless", "--max-steps", str(logged + 3))
    assert r.returncode == 0, r.stderr[-2000:]
    recs = read_events(log).records
    assert [x["from_step"] for x in since_last_start(recs) if x["kind"] == "resume"] == [max(saved)]
    assert [x["step"] for x in dedupe_steps(recs)] == list(range(1, logged + 4))


@pytest.mark.slow
def test_full_logs_disk_in_the_cockpit_pauses_and_goes_on_with_every_record(
    tiny_model, write_config, tmp_path
):
    # Injected (runs where no tmpfs can be mounted): from step 4's record on, the next 6 writes of
    # the run log fail with ENOSPC after writing half their data; then the disk has room again.
    faults.reset("enospc@log:4x6")
    cfg = write_config(tiny_model("qwen3"), max_steps=8, save_steps=3, guard={"disk_poll_s": 0.2})
    seen: list[dict] = []
    result = run(load_config(cfg)[0], controls=Controls(), listeners=[seen.append])
    assert result.status == "completed" and result.step == 8
    contents = read_events(tmp_path / "logs" / "test" / "events.jsonl")
    assert contents.bad_lines == []
    recs = contents.records
    assert [r["step"] for r in recs if r["kind"] == "step"] == list(range(1, 9))  # each once, in order
    (alert,) = alerts(recs, "disk_full")
    assert alert["where"] == "logs" and "kept in memory" in alert["message"]
    paused = [r for r in recs if r["kind"] == "paused"]
    resumed = [r for r in recs if r["kind"] == "resumed"]
    assert paused and paused[0]["reason"] == "disk_full"
    assert resumed and resumed[0]["reason"] == "the run log can be written again"
    # everything the listeners saw is in the file too: nothing was lost
    assert [(r["kind"], r.get("step")) for r in recs] == [(r["kind"], r.get("step")) for r in seen]
