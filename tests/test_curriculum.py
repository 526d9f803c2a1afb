"""Curriculum phases: the mix per phase against the weights, packing within phases, and a
real tiny training run stopped mid-phase and resumed that sees the same rows."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from engine.config.config import CurriculumPhase, validate
from engine.errors import UserError
from engine.run.control import Controls
from engine.run.events import read_events
from engine.train import curriculum as cur
from engine.train import curriculum_trainer
from tests.conftest import base_config, write_jsonl

NAMES = ["general", "coding", "reasoning", "psychology", "esoteric", "identity"]


def _plan(n=6000, seed=1, packing=True, phases=None, max_length=512):
    rng = np.random.default_rng(0)
    p = np.array([40, 25, 15, 10, 9.5, 0.5])
    cats = rng.choice(len(NAMES), size=n, p=p / p.sum())
    lengths = rng.integers(20, 400, size=n)
    phases = phases or [
        CurriculumPhase(name="full", start_epoch=0, end_epoch=1),
        CurriculumPhase(
            name="foundation",
            start_epoch=1,
            end_epoch=1.5,
            weights={"general": 2, "coding": 1, "reasoning": 1},
        ),
        CurriculumPhase(
            name="integration",
            start_epoch=1.5,
            end_epoch=2.5,
            weights={"psychology": 1, "esoteric": 1, "*": 0.25},
        ),
        CurriculumPhase(name="identity", start_epoch=2.5, end_epoch=3, weights={"identity": 0.2, "*": 0.2}),
    ]
    return (
        cur.Plan(cats, NAMES, lengths, phases, seed=seed, max_length=max_length, packing=packing),
        cats,
        lengths,
    )


def _rows_of(plan, seg, epochs=3):
    stop = min(seg.row_end, epochs * plan.rows_per_epoch)
    return [plan.row(pos) for pos in range(seg.row_start, stop)]


def test_mix_per_phase_matches_the_weights():
    plan, cats, _ = _plan()
    segs = [s for s in plan.segments if s.row_start < 3 * plan.rows_per_epoch]
    assert [s.name for s in segs] == ["full", "foundation", "integration", "identity"]
    for seg in segs:
        drawn = np.concatenate(_rows_of(plan, seg))
        got = np.bincount(cats[drawn], minlength=len(NAMES)) / len(drawn)
        want = seg.shares or dict(
            zip(NAMES, np.bincount(cats, minlength=len(NAMES)) / len(cats), strict=True)
        )
        for c, name in enumerate(NAMES):
            assert abs(got[c] - want.get(name, 0.0)) < 0.02, (seg.name, name, got[c], want.get(name))
        if seg.name == "foundation":  # categories not named, and no "*": left out
            assert got[NAMES.index("identity")] == 0 and got[NAMES.index("esoteric")] == 0
        if seg.name == "integration":  # "*": 0.25 of 2.25 for the rest, shared by their sizes
            sizes = np.bincount(cats, minlength=len(NAMES))
            rest = [NAMES.index(c) for c in ("general", "coding", "reasoning", "identity")]
            for c in rest:
                assert abs(seg.shares[NAMES[c]] - 0.25 / 2.25 * sizes[c] / sizes[rest].sum()) < 1e-9
            assert abs(seg.shares["psychology"] - 1 / 2.25) < 1e-9
        # seen() over the phase's span says the same as the rows themselves
        a, _ = plan.seen(seg.row_start)
        b, _ = plan.seen(min(seg.row_end, 3 * plan.rows_per_epoch))
        assert (b - a).tolist() == np.bincount(cats[drawn], minlength=len(NAMES)).tolist()


def test_rows_fit_never_mix_phases_and_epochs_have_a_fixed_size():
    plan, cats, lengths = _plan()
    n = plan.rows_per_epoch
    clipped = np.minimum(lengths, 512)
    assert clipped.sum() / (n * 512) > 0.9  # packed tight
    foundation = {NAMES.index(c) for c in ("general", "coding", "reasoning")}
    for e in range(3):
        plan.row(e * n)  # generates the epoch
        offsets, ex = plan._epochs[e]
        assert len(offsets) == n + 1  # exactly rows_per_epoch rows
        sizes = np.add.reduceat(clipped[ex], offsets[:-1])
        assert sizes.max() <= 512 and (np.diff(offsets) > 0).all()
    seg = plan.segment_at(n)
    assert seg.name == "foundation"
    for row in _rows_of(plan, seg):  # a row of the foundation phase holds only its categories
        assert set(cats[row].tolist()) <= foundation
    # the natural first epoch takes every example (a few spill from the next pass)
    first = plan._epochs[0][1]
    assert len(np.unique(first)) == len(cats) and len(first) < len(cats) * 1.01


def test_same_seed_same_rows_other_seed_other_rows_and_no_packing():
    a, _, _ = _plan(seed=3)
    b, _, _ = _plan(seed=3)
    c, _, _ = _plan(seed=4)
    positions = [0, 5, a.rows_per_epoch + 7, 2 * a.rows_per_epoch + 11]
    assert all(a.row(p).tolist() == b.row(p).tolist() for p in positions)
    assert any(a.row(p).tolist() != c.row(p).tolist() for p in positions)
    plain, _, _ = _plan(packing=False)
    assert plain.rows_per_epoch == 6000 and len(plain.row(6000 + 3)) == 1


def test_unknown_category_and_bad_phases_name_the_key(tmp_path):
    with pytest.raises(UserError, match=r"curriculum.phases\[1\].weights.redteam.*categories: coding"):
        _plan(
            phases=[
                CurriculumPhase(name="a", start_epoch=0, end_epoch=1),
                CurriculumPhase(name="b", start_epoch=1, end_epoch=2, weights={"redteam": 1}),
            ]
        )
    raw = base_config("m", num_epochs=2)
    raw["curriculum"] = {
        "phases": [
            {"name": "a", "start_epoch": 0.5, "end_epoch": 1.5},
            {"name": "b", "start_epoch": 1, "end_epoch": 2},
        ]
    }
    with pytest.raises(UserError, match=r"curriculum.phases\[1\].start_epoch.*before phase 'a' ends"):
        validate(raw, tmp_path / "c.yaml", json.dumps(raw))


def test_rows_consumed_follows_the_trainer_epoch_layout():
    plan, _, _ = _plan(n=600)
    n = plan.rows_per_epoch
    steps_per_epoch = math.ceil(math.ceil(n / 4) / 2)
    assert cur.rows_consumed(plan, 0, 4, 2) == 0
    assert cur.rows_consumed(plan, 3, 4, 2) == 24
    assert cur.rows_consumed(plan, steps_per_epoch, 4, 2) == n
    assert cur.rows_consumed(plan, steps_per_epoch + 1, 4, 2) == n + 8


# ---- a real run, stopped in the middle of a phase and resumed ----------------------------------


def _data(tmp_path):
    rows = []
    for i in range(48):
        cat = ["alpha", "beta", "gamma", "delta"][i % 4]
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"{cat} question {i}?"},
                    {"role": "assistant", "content": f"{cat} answer {i}" + " ok" * (i % 7)},
                ],
                "_category": cat,
            }
        )
    return write_jsonl(tmp_path / "cur.jsonl", rows)


def _config(tmp_path, model, data, out):
    raw = base_config(
        model,
        data,
        sequence_len=64,
        micro_batch_size=2,
        gradient_accumulation_steps=2,
        num_epochs=2,
        learning_rate=0.001,
        save_steps=1000,
        output_dir=str(tmp_path / out / "ckpt"),
        logs_dir=str(tmp_path / out / "logs"),
        run_name="run",
    )
    raw["curriculum"] = {
        "mix_every": 2,
        "phases": [
            {"name": "warm", "start_epoch": 0.0, "end_epoch": 0.5},
            {"name": "focus", "start_epoch": 0.5, "end_epoch": 1.5, "weights": {"alpha": 3, "beta": 1}},
            {"name": "rest", "start_epoch": 1.5, "end_epoch": 2.0, "weights": {"*": 1}},
        ],
    }
    config, _ = validate(raw, tmp_path / f"{out}.yaml")
    return config


@pytest.fixture
def one_thread():
    """Tiny models on a shared 2-core box: torch's second thread only adds contention."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def served(monkeypatch):
    """Every (position, example ids) the training dataloader asks for, in order."""
    seen: list[tuple[int, tuple]] = []
    original = curriculum_trainer.CurriculumDataset.__getitem__

    def spy(self, position):
        seen.append((int(position), tuple(self.plan.row(int(position)).tolist())))
        return original(self, position)

    monkeypatch.setattr(curriculum_trainer.CurriculumDataset, "__getitem__", spy)
    return seen


@pytest.mark.slow
def test_resume_mid_phase_continues_the_same_sequence(tmp_path, tiny_model, served, one_thread):
    from engine.train.train import run

    model, data = tiny_model("qwen3"), _data(tmp_path)
    full = run(_config(tmp_path, model, data, "full"), resume="never")
    assert full.status == "completed"
    whole = list(served)
    served.clear()
    events = read_events(tmp_path / "full" / "logs" / "run" / "events.jsonl").records
    plan_rec = next(r for r in events if r["kind"] == "curriculum")
    n = plan_rec["rows_per_epoch"]
    assert [p for p, _ in whole] == list(range(2 * n))  # every row once, in order
    assert [r["name"] for r in events if r["kind"] == "phase"] == ["warm", "focus", "rest"]

    # stop inside `focus` (it spans epoch 0.5 to 1.5), then resume
    config = _config(tmp_path, model, data, "split")
    steps_per_epoch = math.ceil(math.ceil(n / 2) / 2)
    stop_at = int(1.2 * steps_per_epoch) - 1  # the stop lands one step later, in epoch 1
    controls = Controls()

    def stopper(r):
        if r["kind"] == "step" and r["step"] == stop_at:
            controls.request_stop("test")

    first = run(config, controls=controls, listeners=[stopper], resume="never")
    assert first.status == "stopped" and first.last_checkpoint
    k = first.step
    used = cur.rows_consumed(_PlanSize(n), k, 2, 2)
    assert n < used < 1.5 * n  # in the middle of `focus`, in the middle of an epoch
    before = list(served)
    served.clear()
    second = run(config, resume="auto")
    assert second.status == "completed"
    after = list(served)

    assert before[:used] == whole[:used]
    assert after == whole[used:]  # the resumed run picks up at the very next row
    log = read_events(tmp_path / "split" / "logs" / "run" / "events.jsonl").records
    resumed_phase = [r for r in log if r["kind"] == "phase" and r.get("resumed")]
    assert resumed_phase and resumed_phase[0]["name"] == "focus" and resumed_phase[0]["step"] == k
    last_mix = [r for r in log if r["kind"] == "mix"][-1]
    assert last_mix == {**[r for r in events if r["kind"] == "mix"][-1], "t": last_mix["t"]}
    assert sum(last_mix["examples"].values()) == sum(len(ids) for _, ids in whole)


class _PlanSize:
    def __init__(self, n: int) -> None:
        self.rows_per_epoch = n
