"""The decode warm-up before the first step leaves a training model exactly as it was."""

from __future__ import annotations

import pytest
import torch


def test_warm_up_leaves_the_training_model_as_it_was(tiny_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from engine.chat.generate import _DECODERS
    from engine.chat.warm import warm

    base = AutoModelForCausalLM.from_pretrained(tiny_model("qwen3"))
    model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    rng = torch.get_rng_state()
    assert warm(model) is None  # no GPU here: nothing runs
    seconds = warm(model, cuda_only=False)
    assert seconds is not None and seconds > 0
    assert model.training and all(m.training for m in model.modules())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert torch.equal(torch.get_rng_state(), rng)
    assert model not in _DECODERS  # nothing kept for the probes to find


@pytest.mark.slow
def test_a_run_warms_inside_trainer_train_before_its_first_step_and_trains_the_same(
    tiny_model, tmp_path, monkeypatch
):
    # Trainer.train() applies Liger's kernels: a warm-up before it warmed kernels no probe runs
    # (on an H100 the first probe then compiled the q/k norm's). CPU here, so warm() is made to run.
    import inspect

    from conftest import train_tiny

    from engine.chat import warm as warm_module
    from engine.run.events import read_events

    real, seen = warm_module.warm, []

    def warm_on_cpu_too(model, cuda_only=True):
        frames = inspect.stack()
        in_train = any(
            f.function == "train" and f.filename.endswith("transformers/trainer.py") for f in frames
        )
        events = tmp_path / "warm" / "logs" / "w" / "events.jsonl"
        seen.append((in_train, [r["kind"] for r in read_events(events).records]))
        return real(model, cuda_only=False)

    model = tiny_model("qwen3")
    monkeypatch.setattr(warm_module, "warm", warm_on_cpu_too)
    train_tiny(model, tmp_path / "warm", "w", max_steps=3)
    monkeypatch.setattr(warm_module, "warm", real)
    train_tiny(model, tmp_path / "cold", "c", max_steps=3)

    assert len(seen) == 1
    in_train, kinds_before = seen[0]
    assert in_train and "start" in kinds_before and "step" not in kinds_before

    def records(root, name):
        return read_events(root / "logs" / name / "events.jsonl").records

    warm_run, cold_run = records(tmp_path / "warm", "w"), records(tmp_path / "cold", "c")
    begin = next(r for r in warm_run if r["kind"] == "train_begin")
    assert begin["decode_warm_s"] > 0
    assert "decode_warm_s" not in next(r for r in cold_run if r["kind"] == "train_begin")
    losses = [[r["loss"] for r in run if r["kind"] == "step"] for run in (warm_run, cold_run)]
    assert len(losses[0]) == 3 and losses[0] == losses[1]  # the warm-up changes no number of the run
