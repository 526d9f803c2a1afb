"""Retention: save_total_limit with the best (by eval_loss) and the newest checkpoint always kept,
with mismatched save/eval intervals and across restarts."""

from __future__ import annotations

import json

import pytest

from engine.config.config import load_config
from engine.run import checkpoints
from engine.run.events import read_events
from engine.train.train import run


def fake(out, step, eval_loss=None, eval_step=None):
    folder = out / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"x")
    meta = {"step": step, "eval_loss": eval_loss}
    if eval_step is not None:
        meta["eval_step"] = eval_step
    checkpoints.mark_complete(folder, meta)


def on_disk(out):
    return [c.step for c in checkpoints.scan(out)[0]]


@pytest.mark.parametrize(
    ("limit", "kept"),
    [(1, [4, 10]), (2, [4, 10]), (3, [4, 8, 10]), (5, [2, 4, 6, 8, 10]), (None, [2, 4, 6, 8, 10])],
)
def test_retain_keeps_the_newest_and_the_best(tmp_path, limit, kept):
    out = tmp_path / "out"
    for step, loss in [(2, 3.0), (4, 1.0), (6, 2.0), (8, 2.5), (10, 2.2)]:
        fake(out, step, loss, step)
    checkpoints.retain(out, limit)
    assert on_disk(out) == kept


def test_a_stale_eval_loss_does_not_make_a_checkpoint_best(tmp_path):
    # checkpoint-6's marker carries the eval of step 4 (mismatched intervals): not its weights' loss
    out = tmp_path / "out"
    fake(out, 4, 1.5, 4)
    fake(out, 6, 1.0, 4)
    fake(out, 8, 2.0, 8)
    assert checkpoints.best(checkpoints.scan(out)[0]).step == 4
    checkpoints.retain(out, 1)
    assert on_disk(out) == [4, 8]


@pytest.mark.slow
def test_best_survives_a_restart_with_mismatched_intervals(tiny_model, write_config, tmp_path):
    # eval every 3 steps, save every 4, keep 1: a new best at step 3, 6, 9 is saved there too.
    common = dict(save_steps=4, eval_steps=3, val_set_size=0.2, save_total_limit=1)
    cfg = write_config(tiny_model("qwen3"), max_steps=12, learning_rate=0.003, **common)
    run(load_config(cfg)[0])
    log = tmp_path / "logs" / "test" / "events.jsonl"
    recs = read_events(log).records
    evals = {r["step"]: r["eval_loss"] for r in recs if r["kind"] == "eval"}
    assert sorted(evals) == [3, 6, 9, 12]
    saves = [r["step"] for r in recs if r["kind"] == "save"]
    assert {3, 4, 8, 12} <= set(saves)  # 3: a new best at a step that is not a save step
    # Replaying the run log: no removal ever took the newest or the best-so-far checkpoint.
    best: tuple[float, int] | None = None
    newest = None
    for r in recs:
        if r["kind"] == "eval" and (best is None or r["eval_loss"] < best[0]):
            best = (r["eval_loss"], r["step"])
        elif r["kind"] == "save":
            newest = r["step"]
        elif r["kind"] == "checkpoint_removed":
            removed = int(r["path"].rsplit("-", 1)[1])
            assert removed != newest and (best is None or removed != best[1])
    marker = json.loads((tmp_path / "out" / "checkpoint-12" / "leviathan.json").read_text())
    assert marker["eval_step"] == 12

    # Restart with a learning rate far too high (allowed, recorded): the evals get worse, so
    # the best stays checkpoint-12 while newer ones are saved; nothing in memory knows it.
    cfg = write_config(tiny_model("qwen3"), max_steps=16, learning_rate=200.0, **common)
    run(load_config(cfg)[0])
    recs = read_events(log).records
    later = {r["step"]: r["eval_loss"] for r in recs if r["kind"] == "eval" and r["step"] > 12}
    assert later and all(loss > evals[12] for loss in later.values())
    assert on_disk(tmp_path / "out") == [12, 16]  # the best and the newest, though the limit is 1
    assert any(r["kind"] == "note" and "learning_rate" in r["message"] for r in recs)
