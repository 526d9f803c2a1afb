"""Real training of tiny random models through the same loading path as a real model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from engine.config.config import load_config
from engine.run.events import dedupe_steps, read_events
from engine.train.train import run
from tests.conftest import train_tiny, write_jsonl

CHAT = {
    "messages": [
        {"role": "user", "content": "Who are you?"},
        {"role": "assistant", "content": "I am Leviathan."},
    ]
}
SHAREGPT = {
    "conversations": [{"from": "human", "value": "Who are you?"}, {"from": "gpt", "value": "I am Leviathan."}]
}
ALPACA = {"instruction": "Who are you?", "input": "", "output": "I am Leviathan."}


def events(run_dir):
    return read_events(run_dir / "events.jsonl").records


@pytest.mark.parametrize("arch", ["qwen3", "llama", "qwen3_vl"])
@pytest.mark.slow
def test_each_architecture_trains_and_logs(arch, tiny_model, write_config, tmp_path):
    config, _ = load_config(
        write_config(tiny_model(arch), max_steps=6, save_steps=3, val_set_size=0.1, eval_steps=3)
    )
    result = run(config)
    assert result.status == "completed" and result.step == 6
    recs = events(result.run_dir)
    kinds = [r["kind"] for r in recs]
    for kind in ("data", "start", "step", "eval", "save", "end"):
        assert kind in kinds, kind
    steps = dedupe_steps(recs)
    assert [s["step"] for s in steps] == list(range(1, 7))
    assert all(s["tokens"] > 0 and s["tokens_per_s"] > 0 and math.isfinite(s["loss"]) for s in steps)
    ev = next(r for r in recs if r["kind"] == "eval")
    assert ev["perplexity"] == pytest.approx(math.exp(ev["eval_loss"]))
    assert all("t" in r for r in recs)
    assert (result.run_dir / "config.yaml").is_file()
    ckpt = tmp_path / "out" / "checkpoint-6"
    assert (ckpt / "adapter_model.safetensors").is_file() and (ckpt / "leviathan.json").is_file()


@pytest.mark.slow
def test_vision_tower_is_frozen_and_untouched(tiny_model, write_config, tmp_path):
    from safetensors.torch import load_file

    base = tiny_model("qwen3_vl")
    config, _ = load_config(write_config(base, max_steps=3, save_steps=3))
    run(config)
    adapter = load_file(tmp_path / "out" / "checkpoint-3" / "adapter_model.safetensors")
    assert adapter and not any("visual" in k for k in adapter)
    assert all("language_model" in k for k in adapter)
    cfg = json.loads((tmp_path / "out" / "checkpoint-3" / "adapter_config.json").read_text())
    assert "visual" not in cfg["target_modules"]


# The loss of each of the first six steps of a tiny random Qwen3 (seed 42, the demo data, the
# base config of tests/conftest.py), recorded from this code and checked to repeat exactly on two
# runs. A change to the data, masks, packing, loss, optimizer or schedule moves it; if the change
# is meant, record the new curve and say why in the commit.
GOLDEN_QWEN3_LOSS = [
    7.99501895904541,
    8.36035442352295,
    8.139902114868164,
    7.8559441566467285,
    8.074244499206543,
    7.54506254196167,
]


# The CUDA default path too: the fused AdamW (the NaN guard's skip decided on the device) and each
# step's record read a step late (engine/train/step_lag.py), made to run on the CPU.
@pytest.mark.parametrize(("optimizer", "lag"), [("adamw_torch", "off"), ("adamw_torch_fused", "on")])
@pytest.mark.slow
def test_golden_loss_curve_of_a_tiny_qwen3_run(optimizer, lag, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("LEVIATHAN_STEP_LAG", lag)
    result = train_tiny(tiny_model("qwen3"), tmp_path, "golden", max_steps=6, optimizer=optimizer)
    losses = [s["loss"] for s in dedupe_steps(events(result.run_dir))]
    # float32 on CPU repeated bit for bit on two runs (and on main with the other branches merged);
    # the tolerance leaves room for another BLAS build, far below the 0.2-0.5 the loss moves a step.
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(GOLDEN_QWEN3_LOSS), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("row,ds_type", [(CHAT, "chat_template"), (SHAREGPT, "sharegpt"), (ALPACA, "alpaca")])
@pytest.mark.slow
def test_each_data_type_trains(row, ds_type, tiny_model, write_config, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [row] * 40)
    cfg = write_config(tiny_model("qwen3"), data=str(data), max_steps=3)
    raw = load_config(cfg)[0].model_dump()
    raw["datasets"][0]["type"] = ds_type
    from engine.config.config import RunConfig

    result = run(RunConfig.model_validate(raw))
    assert result.status == "completed"
    steps = dedupe_steps(events(result.run_dir))
    assert len(steps) == 3 and steps[0]["loss"] > steps[-1]["loss"] * 0.5


@pytest.mark.slow
def test_several_files_mixed_and_skip_bad_rows(tiny_model, write_config, tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [CHAT] * 20 + ["{broken"])
    b = write_jsonl(tmp_path / "b.jsonl", [SHAREGPT] * 20)
    cfg = write_config(tiny_model("qwen3"), max_steps=2, skip_bad_rows=True)
    raw = load_config(cfg)[0].model_dump()
    raw["datasets"] = [{"path": str(a), "type": "chat_template"}, {"path": str(b), "type": "sharegpt"}]
    from engine.config.config import RunConfig

    result = run(RunConfig.model_validate(raw))
    recs = events(result.run_dir)
    data = next(r for r in recs if r["kind"] == "data")
    assert data["rows"] == 40
    alert = next(r for r in recs if r.get("rule") == "bad_rows")
    assert alert["rows"] == [f"{a}:21: bad JSON (Expecting property name enclosed in double quotes)"]


@pytest.mark.slow
def test_too_long_rows_are_counted_truncated_or_dropped(tiny_model, write_config, tmp_path):
    long = {
        "messages": [
            {"role": "user", "content": "Tell me more."},
            {"role": "assistant", "content": "ok " * 200},
        ]
    }
    prompt_only = {
        "messages": [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]
    }
    data = write_jsonl(tmp_path / "d.jsonl", [CHAT] * 10 + [long] * 3 + [prompt_only])
    # Truncation keeps the start; a row whose answer falls past the cut has nothing to learn and goes.
    for policy, rows in (("truncate", 13), ("drop", 10)):
        cfg = write_config(tiny_model("qwen3"), data=str(data), max_steps=1, too_long=policy, run_name=policy)
        result = run(load_config(cfg)[0], resume="never", force_fresh=True)
        rec = next(r for r in events(result.run_dir) if r["kind"] == "data")
        assert rec["rows"] == rows
        expect = (4, 0, 1) if policy == "truncate" else (0, 4, 0)
        assert (rec["truncated"], rec["dropped_too_long"], rec["no_labels"]) == expect


def test_val_split_is_seeded(tiny_model, write_config, tmp_path):
    from engine.data.prepare import prepare
    from engine.model.model import load_tokenizer

    config, _ = load_config(write_config(tiny_model("qwen3"), val_set_size=0.25))
    tok = load_tokenizer(str(tiny_model("qwen3")))
    a = prepare(config, tok, tmp_path / "val-a")
    b = prepare(config, tok, tmp_path / "val-b")
    assert len(a.val) == 80 and a.val["input_ids"] == b.val["input_ids"]
    assert len(a.train) + len(a.val) == 320


@pytest.mark.slow
def test_stop_control_saves_the_current_step(tiny_model, write_config):
    from engine.run.control import Controls

    controls = Controls()
    seen = []

    def listener(r):
        seen.append(r)
        if r["kind"] == "step" and r["step"] == 4:
            controls.request_stop()

    config, _ = load_config(write_config(tiny_model("qwen3"), max_steps=50))
    result = run(config, controls=controls, listeners=[listener])
    # Asked after step 4's boundary (its record is written after the check): stops at the next one.
    assert result.status == "stopped" and result.step == 5
    assert [r["step"] for r in seen if r["kind"] == "save"] == [5]
    assert seen[-1]["kind"] == "end" and seen[-1]["status"] == "stopped"


@pytest.mark.slow
def test_trained_adapter_lowers_the_loss(persona_checkpoint):
    ckpt, base, answer = persona_checkpoint
    meta = json.loads((ckpt / "leviathan.json").read_text())
    assert meta["loss"] < 0.5
    assert torch.load(ckpt / "rng_state.pth", weights_only=False)
