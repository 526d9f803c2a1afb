"""Axolotl keys that change training, through real tiny runs: lora_model_dir, the loss
watchdog, per-epoch saves, LoRA targets (union, regex), rsLoRA, special tokens."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import base_config, run_config, train_tiny

from engine.config.config import validate
from engine.errors import UserError


def _events(run_dir) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines() if x.strip()]


@pytest.mark.slow
def test_lora_model_dir_starts_from_that_adapter(tiny_model, tmp_path):
    from safetensors.torch import load_file

    from engine.model.model import attach_lora, load_base

    first = train_tiny(tiny_model("qwen3"), tmp_path / "a", "a", max_steps=3, save_steps=3)
    ckpt = first.last_checkpoint
    raw = base_config(tiny_model("qwen3"), lora_model_dir=ckpt)
    config, _ = validate(raw, tmp_path / "b.yaml")
    model = attach_lora(load_base(config.base_model, quant_bits=None, dtype=torch.float32), config, False)
    saved = load_file(f"{ckpt}/adapter_model.safetensors")
    state = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert saved and all(
        torch.equal(state[k.replace(".weight", ".default.weight")], v) for k, v in saved.items()
    )
    assert any(p.requires_grad for p in model.parameters())


def test_lora_model_dir_without_an_adapter_is_refused(tiny_model, tmp_path):
    from engine.model.model import attach_lora, load_base

    config, _ = validate(base_config(tiny_model("qwen3"), lora_model_dir=str(tmp_path)), tmp_path / "c.yaml")
    with pytest.raises(UserError, match="adapter_config.json"):
        attach_lora(load_base(config.base_model, quant_bits=None, dtype=torch.float32), config, False)


def test_target_modules_union_and_regex(tiny_model, tmp_path):
    from engine.model.model import chosen_targets, load_base, lora_targets

    model = load_base(str(tiny_model("qwen3")), quant_bits=None, dtype=torch.float32)
    every = lora_targets(model)

    def targets(**over):
        config, _ = validate(base_config("m", **over), tmp_path / "c.yaml")
        return chosen_targets(model, config)

    assert targets() == sorted(every)
    only_q = [n for n in every if n.endswith("q_proj")]
    assert targets(lora_target_modules=["q_proj"]) == only_q
    assert targets(lora_target_modules=["q_proj"], lora_target_linear=True) == sorted(every)
    regex = r"model\.layers\.[\d]+\.mlp\.(gate|up)_proj"
    assert targets(lora_target_modules=regex) == [n for n in every if n.endswith(("gate_proj", "up_proj"))]


def test_rslora_scales_by_the_root_of_r(tiny_model, tmp_path):
    from engine.model.model import attach_lora, load_base

    config, _ = validate(
        base_config("m", lora_r=16, lora_alpha=32, peft_use_rslora=True), tmp_path / "c.yaml"
    )
    config.base_model = str(tiny_model("qwen3"))
    model = attach_lora(load_base(config.base_model, quant_bits=None, dtype=torch.float32), config, False)
    layer = next(m for m in model.modules() if hasattr(m, "scaling") and isinstance(m.scaling, dict))
    assert layer.scaling["default"] == 32 / 16**0.5


@pytest.mark.slow
def test_loss_watchdog_stops_the_run(tiny_model, tmp_path):
    from engine.train.train import run

    raw = run_config(
        tiny_model("qwen3"),
        tmp_path,
        "w",
        max_steps=10,
        loss_watchdog_threshold=0.01,
        loss_watchdog_patience=2,
    )
    config, _ = validate(raw, tmp_path / "w.yaml")
    result = run(config, resume="never")
    assert result.status == "diverged" and result.step == 2
    alerts = [e for e in _events(result.run_dir) if e.get("rule") == "loss_watchdog"]
    assert len(alerts) == 1 and "0.01" in alerts[0]["message"]


@pytest.mark.slow
def test_saves_per_epoch_and_defaults_in_the_start_record(tiny_model, tmp_path):
    result = train_tiny(tiny_model("qwen3"), tmp_path, "s", max_steps=4, saves_per_epoch=2)
    saves = [e["step"] for e in _events(result.run_dir) if e["kind"] == "save"]
    assert saves[:2] == [2, 4]
    start = next(e for e in _events(result.run_dir) if e["kind"] == "start")
    assert any("lora_target_linear" in line for line in start["axolotl_defaults_differ"])


def test_special_tokens_must_be_in_the_vocabulary(tiny_model, tmp_path):
    from engine.model.model import check_tokens, load_tokenizer

    tok = load_tokenizer(str(tiny_model("llama")))
    config, _ = validate(base_config("m", special_tokens={"pad_token": "<|eot_id|>"}), tmp_path / "c.yaml")
    check_tokens(tok, config)
    assert tok.pad_token == "<|eot_id|>"
    config, _ = validate(
        base_config("m", eot_tokens=["<end_of_turn>"], tokens=["<new>"]), tmp_path / "c.yaml"
    )
    with pytest.raises(UserError) as e:
        check_tokens(tok, config)
    assert "'<end_of_turn>'" in e.value.message and "'<new>'" in e.value.message


@pytest.mark.slow
def test_resume_from_checkpoint_is_resume_path(tiny_model, tmp_path):
    from engine.train.train import run

    first = train_tiny(tiny_model("qwen3"), tmp_path, "r", max_steps=2, save_steps=2)
    raw = run_config(
        tiny_model("qwen3"),
        tmp_path,
        "r",
        max_steps=3,
        resume_from_checkpoint=first.last_checkpoint,
    )
    config, _ = validate(raw, tmp_path / "r2.yaml")
    result = run(config)
    assert result.status == "completed" and result.step == 3
    resumed = [e for e in _events(result.run_dir) if e["kind"] == "resume"]
    assert resumed and resumed[-1]["step"] == 2


def test_trainer_arguments_from_axolotl_keys(tmp_path):
    from engine.train.trainer_args import axolotl_args

    config, _ = validate(
        base_config(
            "m",
            eval_sample_packing=False,
            adam_beta2=0.95,
            cosine_min_lr_ratio=0.1,
            eval_batch_size=2,
            liger_rms_norm=True,
            liger_rope=False,
            tf32=False,
        ),
        tmp_path / "c.yaml",
    )
    args = axolotl_args(config, has_val=True, liger=True)
    assert args["eval_packing"] is False and args["adam_beta2"] == 0.95
    assert args["lr_scheduler_type"] == "cosine_with_min_lr" and args["lr_scheduler_kwargs"] == {
        "min_lr_rate": 0.1
    }
    assert args["per_device_eval_batch_size"] == 2
    assert args["liger_kernel_config"] == {"rms_norm": True, "rope": False} and args["use_liger_kernel"]
    assert axolotl_args(config, has_val=True, liger=False)["use_liger_kernel"] is False
