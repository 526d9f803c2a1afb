"""The decode warm-up before the first step leaves a training model exactly as it was."""

from __future__ import annotations

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
