"""Resume and prepared data: the cache is read (no tokenizer call), the schedule is re-planned for
the new length, and changed data is refused with what changed."""

from __future__ import annotations

import math

import pytest
import yaml

from engine.config.config import validate
from engine.errors import UserError
from engine.run.events import dedupe_steps, read_events
from engine.train.train import run
from tests.conftest import DEMO_DATA, base_config, cli_here

LR = 0.003


def _raw(model, data, tmp_path, max_steps):
    return base_config(
        model,
        data,
        output_dir=str(tmp_path / "out"),
        logs_dir=str(tmp_path / "logs"),
        run_name="r",
        max_steps=max_steps,
        save_steps=2,
        warmup_steps=0,
        lr_scheduler="cosine",
        learning_rate=LR,
    )


def _run(model, data, tmp_path, max_steps, resume="auto"):
    config, _ = validate(_raw(model, data, tmp_path, max_steps), tmp_path / "r.yaml")
    return run(config, resume=resume)


def _records(tmp_path, kind):
    return [r for r in read_events(tmp_path / "logs" / "r" / "events.jsonl").records if r["kind"] == kind]


@pytest.mark.slow
def test_resume_with_more_steps_reads_the_cache_and_replans_the_learning_rate(tmp_path, tiny_model):
    model = tiny_model("qwen3")
    data = tmp_path / "data.jsonl"
    data.write_bytes(DEMO_DATA.read_bytes())
    assert _run(model, data, tmp_path, 2, resume="never").status == "completed"
    assert _run(model, data, tmp_path, 4).status == "completed"
    first, second = _records(tmp_path, "data")
    assert first["cached"] is False and first["encoded_rows"] > 0
    assert second["cached"] is True and second["encoded_rows"] == 0  # no row went through the tokenizer
    assert second["prepared"] == first["prepared"]
    steps = {
        r["step"]: r for r in dedupe_steps(read_events(tmp_path / "logs" / "r" / "events.jsonl").records)
    }
    # HF's cosine without warmup over 4 steps: the rate used by step s is LR * (1 + cos(pi * (s-1) / 4)) / 2
    for s in (3, 4):
        assert steps[s]["lr"] == pytest.approx(LR * 0.5 * (1 + math.cos(math.pi * (s - 1) / 4)), rel=1e-6)
    assert steps[3]["lr"] > 0


@pytest.mark.slow
def test_resume_on_changed_data_is_refused_with_what_changed(tmp_path, tiny_model):
    model = tiny_model("qwen3")
    data = tmp_path / "data.jsonl"
    text = DEMO_DATA.read_text()
    data.write_text(text)
    assert _run(model, data, tmp_path, 2, resume="never").status == "completed"

    # same size, other content: found by the content hash after preparing
    i = text.index('"content": "') + len('"content": "')
    swapped = text[:i] + ("X" if text[i] != "X" else "Y") + text[i + 1 :]
    data.write_text(swapped)
    with pytest.raises(UserError) as e:
        _run(model, data, tmp_path, 4)
    assert "content changed" in str(e.value) and str(data.resolve()) in str(e.value)
    assert "--resume never" in e.value.fix

    # one row more: refused from the size alone, before any preparation
    data.write_text(text + text.splitlines()[0] + "\n")
    cfg = tmp_path / "r2.yaml"
    cfg.write_text(yaml.safe_dump(_raw(model, data, tmp_path, 4)))
    r = cli_here("train", cfg, "--headless")
    assert r.returncode == 2, r.stderr
    assert f"size {len(text.encode()):,} ->" in r.stderr and "Traceback" not in r.stderr

    # restored: the resume goes on
    data.write_text(text)
    assert _run(model, data, tmp_path, 4).status == "completed"
