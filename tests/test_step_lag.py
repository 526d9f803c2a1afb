"""A step's record written a step late (engine/train/step_lag.py) is the record written at once.

On CUDA the trainer reads a step's loss, grad norm, counts and NaN verdict one step later, so
that no step boundary waits for the GPU. ``LEVIATHAN_STEP_LAG=on`` runs that path on the CPU:
the same run with it off and on must write the same records, save the same checkpoints, and
keep tokens/s true where a record read at once follows a lagged one.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from engine import faults
from engine.config.config import load_config
from engine.run.events import read_events
from engine.train.step_lag import Lagged
from engine.train.train import run

TIMING = {"t", "tokens_per_s", "mfu", "s_per_step", "seconds", "setup_s", "decode_warm_s", "pid"}


def _untimed(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if not k.endswith(("runtime", "per_second"))}


@pytest.fixture(autouse=True)
def no_faults_after():
    yield
    faults.reset("")


def test_lagged_values_come_back_exact_and_plain_ones_pass_through():
    big = 2**24 + 1  # a float32 would round it
    lag = Lagged.take(
        5,
        0.5,
        {
            "tokens": torch.tensor(big),
            "loss": torch.tensor(1.25),
            "grad_norm": None,
            "ok": torch.tensor(True),
        },
        {"steps": 1},
    )
    got = lag.read()
    assert got == {"steps": 1, "grad_norm": None, "tokens": float(big), "loss": 1.25, "ok": 1.0}
    assert int(got["tokens"]) == big and (lag.step, lag.epoch) == (5, 0.5)


def _run(tiny, write_config, tmp_path, monkeypatch, lag: str, name: str, **over):
    monkeypatch.setenv("LEVIATHAN_STEP_LAG", lag)
    cfg = write_config(
        tiny,
        name=f"{name}.yaml",
        output_dir=str(tmp_path / name / "out"),
        logs_dir=str(tmp_path / name / "logs"),
        optimizer="adamw_torch_fused",
        **over,
    )
    result = run(load_config(cfg)[0])
    recs = read_events(tmp_path / name / "logs" / "test" / "events.jsonl").records
    return result, recs


def _counted(take, steps: list):
    def counted(step, *args):
        steps.append(step)
        return take(step, *args)

    return staticmethod(counted)


def _plain(recs: list[dict], root) -> list[dict]:
    """The records without what only the clock or the run's own folder decides."""
    out = []
    first = next(i for i, r in enumerate(recs) if r["kind"] == "train_begin")
    for r in recs[first:]:
        out.append(
            {k: v for k, v in r.items() if k not in TIMING and not (isinstance(v, str) and str(root) in v)}
        )
    return out


@pytest.mark.slow
def test_a_lagged_run_writes_the_records_and_checkpoints_of_a_run_read_at_once(
    tiny_model, write_config, tmp_path, monkeypatch
):
    tiny = tiny_model("qwen3")
    # Steps 1-2, 5 and 7 lag; 3 and 6 save, 4 evaluates, 8 is the last: those are read at once.
    over = dict(max_steps=8, save_steps=3, val_set_size=0.25, eval_steps=4)
    at_once, recs_off = _run(tiny, write_config, tmp_path, monkeypatch, "off", "off", **over)
    taken = []
    monkeypatch.setattr(Lagged, "take", _counted(Lagged.take, taken))
    lagged, recs_on = _run(tiny, write_config, tmp_path, monkeypatch, "on", "on", **over)
    assert taken == [1, 2, 5, 7]  # the path ran, at the boundaries nothing acted on
    assert at_once.status == lagged.status == "completed" and lagged.step == 8
    assert _plain(recs_on, tmp_path) == _plain(recs_off, tmp_path)
    steps_on = [r for r in recs_on if r["kind"] == "step"]
    assert [r["step"] for r in steps_on] == list(range(1, 9))
    for step in (3, 6, 8):
        a = load_file(tmp_path / "off" / "out" / f"checkpoint-{step}" / "adapter_model.safetensors")
        b = load_file(tmp_path / "on" / "out" / f"checkpoint-{step}" / "adapter_model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        sa, sb = (
            json.loads((tmp_path / w / "out" / f"checkpoint-{step}" / "trainer_state.json").read_text())
            for w in ("off", "on")
        )
        assert [_untimed(e) for e in sb["log_history"]] == [_untimed(e) for e in sa["log_history"]]
        assert sb["num_input_tokens_seen"] == sa["num_input_tokens_seen"]
    # A record read at once right after a lagged one (steps 3 and 6) times its own step, not the
    # moment between the lagged record's writing and its own: no step is 20x faster than the rest.
    per_step = sorted(r["s_per_step"] for r in steps_on)
    assert per_step[0] > per_step[len(per_step) // 2] / 20


@pytest.mark.slow
def test_a_nan_on_the_device_path_updates_nothing_and_is_recorded_a_step_late(
    tiny_model, write_config, tmp_path, monkeypatch
):
    faults.reset("nan@step:4")
    result, recs = _run(
        tiny_model("qwen3"), write_config, tmp_path, monkeypatch, "on", "nan", max_steps=6, save_steps=3
    )
    assert result.status == "completed" and result.step == 6
    (skip,) = [r for r in recs if r["kind"] == "skip"]
    assert skip["step"] == 4 and skip["loss"] == "nan"
    by_step = {r["step"]: r for r in recs if r["kind"] == "step"}
    assert by_step[4]["loss"] == "nan" and all(isinstance(by_step[s]["loss"], float) for s in (1, 2, 3, 5, 6))
    assert recs.index(skip) < recs.index(by_step[4]) < recs.index(by_step[5])
    # The fused optimizer took the verdict on the device: five updates in six steps, every count.
    state = torch.load(tmp_path / "nan" / "out" / "checkpoint-6" / "optimizer.pt", weights_only=True)["state"]
    assert state and all(float(s["step"]) == 5.0 for s in state.values())


@pytest.mark.slow
def test_a_nan_streak_stops_a_lagged_run_without_saving_its_steps(
    tiny_model, write_config, tmp_path, monkeypatch
):
    faults.reset("nan@step:4x2")
    result, recs = _run(
        tiny_model("qwen3"),
        write_config,
        tmp_path,
        monkeypatch,
        "on",
        "stop",
        max_steps=9,
        save_steps=3,
        guard={"nan_policy": "stop", "nan_patience": 2},
    )
    assert [r["step"] for r in recs if r["kind"] == "skip"] == [4, 5]
    (stop,) = [r for r in recs if r["kind"] == "alert" and r["rule"] == "nan_stop"]
    assert stop["step"] == 5
    # Step 5's verdict is read once step 6 is queued: step 6 trains, and nothing after 3 is saved.
    assert result.step == 6 and recs[-1]["kind"] == "end" and recs[-1]["status"] == "diverged"
    out = tmp_path / "stop" / "out"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3"]
