"""`check --tokens`: tokens per category with the model's tokenizer, in parallel, same answers."""

from __future__ import annotations

import json

import pytest
import yaml

from engine.config.config import validate
from engine.data import prepare
from engine.model.model import load_tokenizer
from tests.conftest import DEMO_DATA, base_config, cli_here


def _data(tmp_path):
    lines = DEMO_DATA.read_text().splitlines()
    bad = [
        "{not json",
        json.dumps({"messages": [{"role": "user", "content": "hi"}], "_category": "x"}),  # no assistant
        "",
    ]
    rows = (
        lines[:150]
        + bad
        + lines[150:]
        + [
            json.dumps(
                {"messages": [{"role": "user", "content": "q " * 200}, {"role": "assistant", "content": "a"}]}
            )
        ]
    )
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_parallel_counts_equal_serial(tmp_path, tiny_model, monkeypatch):
    model = tiny_model("qwen3")
    raw = base_config(model, _data(tmp_path), sequence_len=128)
    config, _ = validate(raw, tmp_path / "c.yaml")
    tok = load_tokenizer(str(model))
    serial = prepare.check(config, tok, workers=1, collect=True)
    monkeypatch.setattr(prepare, "PARALLEL_MIN", 0)
    parallel = prepare.check(config, tok, workers=2, collect=True)
    for field in (
        "rows_by_file",
        "rows_by_category",
        "tokens_by_category",
        "trained_by_category",
        "lengths",
        "bad",
        "too_long",
        "row_categories",
        "row_lengths",
    ):
        assert getattr(serial, field) == getattr(parallel, field), field
    assert [n for _, n, _ in serial.bad] == [151, 152]
    assert serial.too_long and serial.too_long[0][1] == 324
    assert 0 < sum(serial.trained_by_category.values()) < sum(serial.tokens_by_category.values())
    assert serial.tokens_by_category["identity"] == sum(
        n for c, n in zip(serial.row_categories, serial.row_lengths, strict=True) if c == "identity"
    )


def test_cli_check_tokens_prints_tokens_and_the_curriculum_plan(tmp_path, tiny_model):
    raw = base_config(tiny_model("qwen3"), DEMO_DATA, sequence_len=256, num_epochs=2)
    raw["curriculum"] = {
        "phases": [
            {"name": "warm", "start_epoch": 0, "end_epoch": 1},
            {"name": "focus", "start_epoch": 1, "end_epoch": 2, "weights": {"identity": 1, "coding": 1}},
        ]
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    r = cli_here("check", path, "--tokens", "--workers", "2")
    assert r.returncode == 0, r.stderr
    assert "tokens per _category" in r.stdout and "trained" in r.stdout
    assert "curriculum preview" in r.stdout and "focus: epochs 1-2" in r.stdout and "passes" in r.stdout
    raw["curriculum"]["phases"][1]["weights"] = {"identiy": 1}
    path.write_text(yaml.safe_dump(raw))
    r = cli_here("check", path, "--tokens")
    assert (
        r.returncode == 2
        and "curriculum.phases[1].weights.identiy" in r.stderr
        and "Traceback" not in r.stderr
    )


@pytest.mark.parametrize("name", ["leviathan_10pct.yaml", "leviathan_full.yaml"])
def test_shipped_configs_load(name):
    from pathlib import Path

    from engine.config.config import load_config

    config, notes = load_config(Path(__file__).resolve().parent.parent / "configs" / name)
    assert config.base_model == "Qwen/Qwen3-VL-8B-Instruct" and config.adapter == "qlora"
    assert (config.save_steps, config.save_total_limit, config.learning_rate, config.warmup_steps) == (
        1000,
        5,
        2e-4,
        100,
    )
    assert config.lora_r == 16 and config.micro_batch_size * config.gradient_accumulation_steps == 16
    if name == "leviathan_full.yaml":
        assert config.num_epochs == 3
        assert [(p.start_epoch, p.end_epoch) for p in config.curriculum.phases] == [
            (0, 1),
            (1, 1.5),
            (1.5, 2.5),
            (2.5, 3),
        ]


def test_full_schedule_names_the_demo_categories(tiny_model):
    """Every category the full config weights is one the demo set (the guide's categories) has."""
    from pathlib import Path

    import numpy as np

    from engine.config.config import load_config
    from engine.train.curriculum import Plan

    config, _ = load_config(Path(__file__).resolve().parent.parent / "configs" / "leviathan_full.yaml")
    cats = [json.loads(x)["_category"] for x in DEMO_DATA.read_text().splitlines()]
    names = sorted(set(cats))
    plan = Plan(
        np.array([names.index(c) for c in cats]),
        names,
        np.full(len(cats), 300),
        config.curriculum.phases,
        seed=42,
        max_length=config.sequence_len,
        packing=True,
    )
    table = plan.phase_table(3 * plan.rows_per_epoch)
    assert [p["name"] for p in table] == ["full_pass", "foundation", "dark_integration", "identity_balance"]
    assert table[1]["draws"].keys() >= {"general", "coding", "reasoning", "knowledge"}
