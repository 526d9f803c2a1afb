"""Probes (``evaluation.on_save``): the suites run on each checkpoint as it is saved, in a real run."""

from __future__ import annotations

import json

import pytest
from conftest import base_config, train_tiny

from engine.errors import UserError
from engine.run import checkpoints
from engine.run.events import read_events

# Its module fixtures train or merge once: under pytest-xdist (`--dist loadgroup`) its tests share a worker.
pytestmark = [pytest.mark.anyio, pytest.mark.xdist_group("probes")]


@pytest.fixture(scope="module")
def probed_run(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("probed")
    result = train_tiny(
        tiny_model("qwen3"),
        root,
        "probed",
        max_steps=4,
        save_steps=2,
        save_total_limit=1,
        lora_dropout=0.1,
        evaluation={"on_save": ["identity", "inference"], "keep_best": "identity", "max_new_tokens": 6},
    )
    return root, result


@pytest.mark.slow
def test_probes_run_at_every_save_and_land_in_the_log_eval_and_marker(probed_run):
    root, result = probed_run
    records = read_events(result.run_dir / "events.jsonl").records
    probes = [r for r in records if r["kind"] == "probe"]
    assert [(r["step"], r["suite"]) for r in probes] == [
        (2, "identity"),
        (2, "inference"),
        (4, "identity"),
        (4, "inference"),
    ]
    from engine.evaluate.evaluate import IDENTITY_PROMPTS, inference_cases

    planned = {"identity": len(IDENTITY_PROMPTS), "inference": len(inference_cases())}
    for r in probes:
        assert "error" not in r, r
        assert r["total"] == planned[r["suite"]] and 0 <= r["passed"] <= r["total"]
        assert r["score"] == r["passed"] / r["total"] and r["seconds"] > 0
        saved = json.loads(
            (result.run_dir / "eval" / f"{r['suite']}-checkpoint-{r['step']}.json").read_text()
        )
        assert saved["status"] == "completed" and saved["step"] == r["step"] and saved["probe"] is True
        assert ("sandbox" in saved) == (r["suite"] == "inference")  # its code ran in the box
        assert len(saved["items"]) == r["total"] and all(i["answer"] is not None for i in saved["items"])
    # While a suite runs, `probing` records count its prompts up to the whole, time left going to 0.
    for step in (2, 4):
        for suite, n in planned.items():
            seen = [r for r in records if r["kind"] == "probing" and (r["step"], r["suite"]) == (step, suite)]
            assert seen[0]["i"] == 0 and seen[-1]["i"] == n and seen[-1]["seconds_left"] == 0
            assert all(r["n"] == n for r in seen)
    # Each probe follows its save, and the pause is left out of the step after it.
    kinds = [r["kind"] for r in records if r["kind"] in ("save", "probe")]
    assert kinds == ["save", "probe", "probe", "save", "probe", "probe"]
    (kept,) = checkpoints.scan(root / "out")[0]  # save_total_limit 1: the newest (equal scores)
    assert kept.step == 4 and set(kept.meta["probe"]) == {"identity", "inference"}


@pytest.mark.slow
async def test_probe_scores_show_in_the_checkpoint_table(probed_run):
    from cockpit.launch import build_attach_app
    from cockpit.widgets.checkpoints_table import CheckpointsTable

    _, result = probed_run
    app = build_attach_app(result.run_dir)
    async with app.run_test(size=(140, 40)) as pilot:
        table = app.query_one(CheckpointsTable)
        for _ in range(100):
            if table.row_count and "probe" in table.columns:
                break
            await pilot.pause(0.05)
        records = read_events(result.run_dir / "events.jsonl").records
        last = {r["suite"]: r for r in records if r["kind"] == "probe" and r["step"] == 4}
        path = next(r["path"] for r in records if r["kind"] == "save" and r["step"] == 4)
        cell = str(table.get_cell(path, "probe"))
        want = f"identity {last['identity']['passed']}/5 · inference {last['inference']['passed']}/"
        assert cell.startswith(want)


def test_keep_best_keeps_the_best_probe_score(tmp_path):
    from engine.evaluate.probes import best_probe_step

    out = tmp_path / "out"
    for step, score in ((100, 0.4), (200, 1.0), (300, 0.6), (400, 0.8)):
        (out / f"checkpoint-{step}").mkdir(parents=True)
        checkpoints.mark_complete(out / f"checkpoint-{step}", {"step": step, "probe": {"identity": score}})
    assert best_probe_step(out, "identity") == 200
    assert best_probe_step(out, "inference") is None
    removed = checkpoints.retain(out, 2, [best_probe_step(out, "identity")])
    assert sorted(p.name for p in removed) == ["checkpoint-100", "checkpoint-300"]


def test_on_save_config_is_checked(tmp_path, tiny_model):
    from engine.config.config import validate

    raw = base_config(tiny_model("qwen3"), evaluation={"on_save": True})
    config, _ = validate(raw, tmp_path / "a.yaml")
    assert config.evaluation.on_save == ["identity", "inference"]
    for bad in ({"on_save": ["identiy"]}, {"keep_best": "inference"}):
        with pytest.raises(UserError) as e:
            validate(base_config(tiny_model("qwen3"), evaluation=bad), tmp_path / "b.yaml")
        assert "evaluation" in str(e.value)
