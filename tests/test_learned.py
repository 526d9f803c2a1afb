"""What it learned: the probe prompts x checkpoints table, from a real tiny run's probe records."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from conftest import train_tiny

from engine.evaluate.learned import changed_words, compact, learned_table
from engine.run.events import read_events

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def probed(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("learned")
    result = train_tiny(
        tiny_model("qwen3"),
        root,
        "learned",
        max_steps=4,
        save_steps=2,
        val_set_size=0.1,
        eval_steps=2,
        evaluation={"on_save": ["identity"], "max_new_tokens": 8},
    )
    return result


def test_changed_words_marks_what_is_new_at_its_place():
    assert changed_words(None, "a b") == [("a", False), ("b", False)]
    got = changed_words("I am a model", "I am Leviathan the model")
    assert got == [("I", False), ("am", False), ("Leviathan", True), ("the", True), ("model", False)]
    assert changed_words("x y", "") == []


@pytest.mark.slow
def test_the_table_holds_every_probe_answer_by_prompt_and_checkpoint(probed):
    records = read_events(probed.run_dir / "events.jsonl").records
    probes = [r for r in records if r["kind"] == "probe"]
    files = {r["step"]: json.loads(Path(r["result"]).read_text()) for r in probes}
    assert sorted(files) == [2, 4]
    table = learned_table(probed.run_dir)
    assert table.steps == [2, 4]
    assert [(s, i) for s, i, _ in table.rows] == [("identity", it["id"]) for it in files[2]["items"]]
    for step, data in files.items():
        assert table.scores[("identity", step)] == (data["passed"], data["total"])
        for it in data["items"]:
            cell = table.cell("identity", it["id"], step)
            assert cell.answer == it["answer"] and cell.passed == it["passed"]
            assert [w for w, _ in cell.words] == it["answer"].split()
    # The words left unmarked at step 4 appear, in order, in the same prompt's answer at step 2.
    for it in files[4]["items"]:
        before = iter(next(x for x in files[2]["items"] if x["id"] == it["id"])["answer"].split())
        kept = [w for w, ch in table.cell("identity", it["id"], 4).words if not ch]
        assert all(any(w == b for b in before) for w in kept)


@pytest.mark.slow
def test_headless_prints_the_compact_table_at_each_probe(probed):
    from engine.cli.headless import Progress

    records = read_events(probed.run_dir / "events.jsonl").records
    out = io.StringIO()
    progress = Progress(out)
    for r in records:
        if r["kind"] == "probe":
            progress(r)
    text = out.getvalue()
    table = learned_table(probed.run_dir)
    want = compact(table, "identity")
    assert want and all(line in text.splitlines() for line in want)
    assert "step 2 (" in want[0] and "step 4 (" in want[0]
    assert len(want) == 1 + len(table.rows)
