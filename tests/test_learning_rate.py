"""The learning rate after a resume has one owner (engine.train.learning_rate): a resume with a
larger --max-steps and a changed learning_rate trains on this run's schedule at this run's rate."""

from __future__ import annotations

import math

import pytest

from engine.config.config import load_config
from engine.run.events import dedupe_steps, read_events
from engine.train.train import run


def cosine(lr: float, warmup: int, total: int, s: int) -> float:
    """transformers' cosine schedule with linear warmup, written out from its definition."""
    if s < warmup:
        return lr * s / warmup
    return lr * 0.5 * (1.0 + math.cos(math.pi * (s - warmup) / (total - warmup)))


@pytest.mark.slow
def test_resume_with_more_steps_and_another_rate_follows_the_new_schedule(tiny_model, write_config, tmp_path):
    common = dict(save_steps=2, lr_scheduler="cosine", warmup_steps=2)
    run(
        load_config(
            write_config(tiny_model("qwen3"), name="a.yaml", max_steps=4, learning_rate=0.003, **common)
        )[0]
    )
    result = run(
        load_config(
            write_config(tiny_model("qwen3"), name="b.yaml", max_steps=8, learning_rate=0.002, **common)
        )[0]
    )
    records = read_events(result.run_dir / "events.jsonl").records
    steps = {r["step"]: r["lr"] for r in dedupe_steps(records)}
    # A step's record shows the rate its update used: the schedule at the step before it.
    assert [steps[s] for s in range(1, 5)] == pytest.approx([cosine(0.003, 2, 4, s - 1) for s in range(1, 5)])
    assert [steps[s] for s in range(5, 9)] == pytest.approx([cosine(0.002, 2, 8, s - 1) for s in range(5, 9)])
    notes = [r["message"] for r in records if r["kind"] == "note" and "resumed schedule" in r["message"]]
    assert notes == ["learning_rate 0.003 -> 0.002: the resumed schedule is scaled by 0.6667"]
