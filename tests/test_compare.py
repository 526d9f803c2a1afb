"""Runs side by side: curves read from real run logs, aligned by epoch/tokens/time, downsampled, config diffs."""

from __future__ import annotations

import json
import math
import random
from array import array

import pytest

from engine.run.compare import config_diff, downsample, load_curves
from engine.run.events import RunLog


def _run(path, n_steps, steps_per_epoch, t0=1000.0, eval_every=10, start=1, resume_gap=None):
    log = RunLog(path / "events.jsonl")
    log.emit("start", step=start - 1)
    for s in range(start, n_steps + 1):
        log.emit(
            "step",
            step=s,
            loss=3.0 / (1 + s / steps_per_epoch),
            epoch=s / steps_per_epoch,
            tokens=s * 512,
        )
        if s % eval_every == 0:
            log.emit("eval", step=s, eval_loss=3.1 / (1 + s / steps_per_epoch))
    log.emit("end", step=n_steps, status="completed")
    log.close()
    return path


def _records(path):
    return [json.loads(line) for line in (path / "events.jsonl").read_text().splitlines()]


def test_two_runs_of_different_sizes_line_up_by_epoch(tmp_path):
    small = load_curves(_run(tmp_path / "ten", 200, 100), "10%")
    big = load_curves(_run(tmp_path / "full", 2000, 1000), "full")
    for curves, path in ((small, tmp_path / "ten"), (big, tmp_path / "full")):
        steps = [r for r in _records(path) if r["kind"] == "step"]
        assert list(curves.x("epoch")) == [r["epoch"] for r in steps]
        assert list(curves.loss) == [r["loss"] for r in steps]
        evals = [r for r in _records(path) if r["kind"] == "eval"]
        assert list(curves.eval_loss) == [r["eval_loss"] for r in evals]
    # at epoch 1.0 both runs have seen their data once: the same point of each curve
    i, j = list(small.epoch).index(1.0), list(big.epoch).index(1.0)
    assert small.loss[i] == big.loss[j] == pytest.approx(1.5)
    assert small.eval_x("epoch")[small.eval_step.tolist().index(100)] == 1.0
    assert big.eval_x("tokens")[0] == 10 * 512


def test_a_resume_keeps_the_last_record_of_each_step_and_time_skips_the_gap(tmp_path):
    path = tmp_path / "r"
    path.mkdir()
    log = RunLog(path / "events.jsonl")
    log.emit("start", step=0)
    for s in (1, 2, 3):
        log.emit("step", step=s, loss=9.0, epoch=s / 10)
    log.emit("end", step=3, status="stopped")
    log.close()
    lines = _records(path)
    for r in lines:  # a restart an hour later repeats step 3
        r["t"] = 1000.0 + r.get("step", 0)
    lines += [
        {"t": 5000.0, "kind": "start", "step": 2},
        {"t": 5001.0, "kind": "step", "step": 3, "loss": 1.0, "epoch": 0.3},
        {"t": 5002.0, "kind": "step", "step": 4, "loss": 0.5, "epoch": 0.4},
    ]
    (path / "events.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"torn": ')
    c = load_curves(path)
    assert list(c.step) == [1, 2, 3, 4] and list(c.loss) == [9.0, 9.0, 1.0, 0.5]
    # the first process trained 1000->1003 (3 s); the second starts at 3 s again, not at 4003 s
    assert list(c.time) == [1.0, 2.0, 4.0, 5.0]
    assert c.ended is None and c.bad_lines == 1


def test_downsample_keeps_spikes_and_bounds_the_points():
    xs = list(range(100_000))
    ys = [1.0] * 100_000
    ys[54_321] = 50.0
    ys[77_777] = float("nan")
    ox, oy = downsample(xs, ys, 100)
    assert len(ox) <= 300 and max(oy) == 50.0 and 54_321 in ox
    assert ox == sorted(ox) and not any(math.isnan(y) for y in oy)  # 77_777 starts no bucket


def test_downsample_picks_each_buckets_first_lowest_and_highest_like_a_plain_scan():
    rng = random.Random(3)
    ys = array("d", (rng.random() for _ in range(50_000)))
    for i in rng.sample(range(50_000), 500):
        ys[i] = rng.choice([float("nan"), float("inf"), -1.0, 9.0])
    n, width = len(ys), 123
    want_x, want_y = [], []
    for b in range(width):  # the rule, one point at a time
        lo, hi = b * n // width, (b + 1) * n // width
        keep = {lo}
        finite = [i for i in range(lo, hi) if ys[i] == ys[i]]
        if finite:
            keep |= {min(finite, key=ys.__getitem__), max(finite, key=ys.__getitem__)}
        for i in sorted(keep):
            want_x.append(i)
            want_y.append(ys[i])
    ox, oy = downsample(range(n), ys, width)
    assert ox == want_x
    assert [str(v) for v in oy] == [str(v) for v in want_y]  # nan == nan as text


def test_config_diff_names_each_changed_key():
    a = {"learning_rate": 2e-4, "lora_r": 16, "datasets": [{"path": "a"}], "health": {"spike_factor": 1.5}}
    b = {"learning_rate": 2e-4, "lora_r": 32, "datasets": [{"path": "b"}], "health": {"spike_factor": 2.0}}
    rows = dict(config_diff([a, b]))
    assert rows == {
        "datasets": [[{"path": "a"}], [{"path": "b"}]],
        "health.spike_factor": [1.5, 2.0],
        "lora_r": [16, 32],
    }
    assert dict(config_diff([a, {**a, "run_name": "x"}], skip=("run_name",))) == {}
