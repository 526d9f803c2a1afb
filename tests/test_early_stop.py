"""Early stopping (early_stopping_patience / early_stopping_threshold) in a real tiny run.

A tiny Qwen3 overfits a few rows of random words at a high learning rate: the held-out rows'
eval_loss falls, then rises. The stopping eval is worked out from the run's own eval records,
with transformers' rule written out here (not the engine's code), and the best checkpoint must
survive retention.
"""

from __future__ import annotations

import random

import pytest
import yaml
from conftest import cli_here, run_config, write_jsonl

from cockpit.run_state import RunState
from engine.config.config import validate
from engine.errors import UserError
from engine.run import checkpoints
from engine.run.events import read_events


def random_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    words = [
        "abyss",
        "tide",
        "pearl",
        "kraken",
        "salt",
        "reef",
        "storm",
        "deep",
        "coral",
        "wreck",
        "lantern",
        "silt",
    ]
    rows = []
    for _ in range(n):
        ask = " ".join(rng.choice(words) for _ in range(6))
        answer = " ".join(rng.choice(words) for _ in range(12))
        rows.append(
            {"messages": [{"role": "user", "content": ask}, {"role": "assistant", "content": answer}]}
        )
    return rows


def expected_stop(evals: list[tuple[int, float]], patience: int, threshold: float) -> tuple[int, int]:
    """(step it stops at, best step): transformers' EarlyStoppingCallback with Trainer's best_metric."""
    best, best_step, misses = None, None, 0
    for step, loss in evals:
        if best is None or (loss < best and abs(loss - best) > threshold):
            misses = 0
        else:
            misses += 1
        if best is None or loss < best:  # Trainer's best_metric moves on any improvement
            best, best_step = loss, step
        if misses >= patience:
            return step, best_step
    raise AssertionError(f"eval_loss never stopped improving: {evals}")


@pytest.mark.slow
def test_stops_at_the_right_eval_and_keeps_the_best(tmp_path, tiny_model):
    data = write_jsonl(tmp_path / "rows.jsonl", random_rows(24, seed=3))
    patience, threshold = 2, 0.01
    raw = run_config(
        tiny_model(),
        tmp_path,
        "early",
        data,
        val_set_size=8,
        eval_steps=2,
        save_steps=1000,
        save_total_limit=1,
        max_steps=60,
        learning_rate=0.05,
        warmup_steps=0,
        lr_scheduler="constant",
        micro_batch_size=4,
        early_stopping_patience=patience,
        early_stopping_threshold=threshold,
    )
    path = tmp_path / "early.yaml"
    path.write_text(yaml.safe_dump(raw))
    done = cli_here("train", path, "--headless")  # the headless command, as a user runs it
    assert done.returncode == 0, done.stderr[-2000:]
    config, _ = validate(raw, path)

    records = read_events(tmp_path / "logs" / "early" / "events.jsonl").records
    evals = [(r["step"], r["eval_loss"]) for r in records if r["kind"] == "eval"]
    stop_step, best_step = expected_stop(evals, patience, threshold)
    assert f"early_stopped at step {stop_step}" in done.stderr and stop_step < 60
    assert f"early stopping: eval_loss has not improved by more than {threshold:g}" in done.stderr
    assert evals[-1][0] == stop_step  # it stopped at that eval, not later
    (stopped,) = [r for r in records if r["kind"] == "early_stopped"]
    assert stopped["step"] == stop_step and stopped["best_step"] == best_step
    end = records[-1]
    assert end["kind"] == "end" and end["status"] == "early_stopped" and end["step"] == stop_step
    kept = {c.step for c in checkpoints.scan(config.output_dir)[0]}
    assert best_step in kept and stop_step in kept  # saved at the stop; the best survived save_total_limit 1


def test_early_stopping_needs_an_eval(tmp_path):
    raw = run_config("some/model", tmp_path, "x", early_stopping_patience=3)
    with pytest.raises(UserError) as e:
        validate(raw, tmp_path / "x.yaml")
    assert "early_stopping_patience" in e.value.message and "val_set_size" in e.value.fix


def test_the_cockpit_header_says_early_stopped():
    state = RunState(read_only=False)
    state.observe([{"kind": "start", "step": 0}, {"kind": "end", "step": 38, "status": "early_stopped"}])
    assert state.label() == "early stopped at step 38"


def test_a_resume_goes_on_counting_from_the_checkpoint(tmp_path):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from engine.run.events import RunLog
    from engine.train.early_stop import EarlyStop

    args = TrainingArguments(
        output_dir=str(tmp_path), eval_strategy="steps", metric_for_best_model="eval_loss", use_cpu=True
    )
    before = EarlyStop(RunLog(tmp_path / "a.jsonl"), patience=3, threshold=0.0)
    before.early_stopping_patience_counter = 2
    state = TrainerState(stateful_callbacks=[before])  # as Trainer writes it into trainer_state.json
    saved = TrainerState.load_from_json  # the checkpoint's state, read back
    state.save_to_json(str(tmp_path / "trainer_state.json"))
    after = EarlyStop(RunLog(tmp_path / "b.jsonl"), patience=3, threshold=0.0)
    after.on_train_begin(args, saved(str(tmp_path / "trainer_state.json")), TrainerControl())
    assert after.early_stopping_patience_counter == 2
