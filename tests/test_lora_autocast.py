"""LoRA layers under autocast (engine/model/lora_autocast.py): no fp32 copy of any layer input
is made, the loss and gradients are PEFT's within bf16 rounding, and outside autocast the
layers are PEFT's own, bit for bit."""

from __future__ import annotations

import collections

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from engine.config.config import RunConfig
from engine.model import lora_autocast
from engine.model.model import attach_lora


class Fp32Copies(TorchDispatchMode):
    """Counts casts to fp32 of tensors as wide as the model's hidden size (layer inputs)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width, self.n = width, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        src = args[0] if args else None
        if (
            func is torch.ops.aten._to_copy.default
            and isinstance(src, torch.Tensor)
            and src.dtype == torch.bfloat16
            and isinstance(out, torch.Tensor)
            and out.dtype == torch.float32
            and src.dim() >= 2
            and src.shape[-1] >= self.width
        ):
            self.n += 1
        return out


def lora_model(path, monkeypatch, cast: str | None, **over):
    from transformers import AutoModelForCausalLM

    if cast:
        monkeypatch.setenv(lora_autocast.ENV, cast)
    else:
        monkeypatch.delenv(lora_autocast.ENV, raising=False)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    config = RunConfig.model_validate(
        {"base_model": str(path), "datasets": [{"path": "x.jsonl"}], "adapter": "lora", "lora_r": 8, **over}
    )
    model = attach_lora(base, config, False)
    g = torch.Generator().manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # PEFT starts B at zero: the adapter must matter here
            p.data.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def step(model, width: int):
    ids = torch.arange(3, 40).reshape(1, -1) % model.config.vocab_size
    counter = Fp32Copies(width)
    with torch.autocast("cpu", dtype=torch.bfloat16), counter:
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads, counter.n


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_no_fp32_input_copies_and_peft_s_numbers(tiny_model, monkeypatch, arch):
    path = tiny_model(arch)
    ours = lora_model(path, monkeypatch, None)
    width = ours.config.hidden_size
    loss, grads, copies = step(ours, width)
    assert all(p.dtype == torch.float32 for n, p in ours.named_parameters() if "lora_" in n)
    peft = lora_model(path, monkeypatch, "peft")
    loss_p, grads_p, copies_p = step(peft, width)
    # PEFT's path casts each adapted layer's input; the rest (the norms' own fp32 math) is common.
    n_lora_layers = sum(1 for n, _ in peft.named_modules() if n.endswith("lora_A"))
    assert copies_p - copies == n_lora_layers
    # One rounding of the sum where PEFT rounds the product, the scaled product and the sum.
    assert torch.allclose(loss, loss_p, rtol=2e-3), (loss, loss_p)
    assert grads.keys() == grads_p.keys() and grads
    for name in grads:
        a, b = grads[name].flatten().double(), grads_p[name].flatten().double()
        assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.999, name
        assert (a - b).norm() <= 0.05 * b.norm(), name


def test_outside_autocast_the_layers_are_peft_s(tiny_model, monkeypatch):
    path = tiny_model("qwen3")
    ids = torch.arange(3, 20).reshape(1, -1)
    ours = lora_model(path, monkeypatch, None)
    assert (
        sum(isinstance(m.__dict__.get("forward"), lora_autocast.FusedForward) for m in ours.modules()) == 14
    )
    # bf16 activations into fp32 adapters without autocast: PEFT's cast is what makes this run.
    out = ours(input_ids=ids).logits
    peft = lora_model(path, monkeypatch, "peft")
    assert not any("forward" in m.__dict__ for m in peft.modules())
    assert torch.equal(out, peft(input_ids=ids).logits)


def test_qlora_layers_take_the_fused_sum_too(tiny_model, monkeypatch):
    """PEFT's bitsandbytes layers skip the cast already; the fused sum (and no clone) is ours."""
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    path = tiny_model("qwen3")
    q = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_quant_storage=torch.bfloat16,
    )
    config = RunConfig.model_validate(
        {"base_model": str(path), "datasets": [{"path": "x.jsonl"}], "adapter": "qlora", "lora_r": 8}
    )
    results = []
    for mode in (None, "peft"):
        if mode:
            monkeypatch.setenv(lora_autocast.ENV, mode)
        torch.manual_seed(0)  # the same A matrices
        base = AutoModelForCausalLM.from_pretrained(path, quantization_config=q, dtype=torch.bfloat16)
        model = attach_lora(base, config, False)
        fused = [
            m for m in model.modules() if isinstance(m.__dict__.get("forward"), lora_autocast.FusedForward)
        ]
        assert len(fused) == (14 if mode is None else 0)
        g = torch.Generator().manual_seed(1)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.data.copy_(torch.randn(p.shape, generator=g) * 0.05)
        results.append(step(model, model.config.hidden_size))
    (loss, grads, _), (loss_p, grads_p, _) = results
    assert torch.allclose(loss, loss_p, rtol=2e-3), (loss, loss_p)
    for name in grads:
        a, b = grads[name].flatten().double(), grads_p[name].flatten().double()
        assert (a - b).norm() <= 0.05 * b.norm(), name


def a_calls(model) -> collections.Counter:
    """Which layers' own A modules run in one autocast step (a shared product runs none)."""
    calls: collections.Counter = collections.Counter()
    for name, m in model.named_modules():
        if name.endswith("lora_A.default"):
            m.register_forward_hook(lambda mod, i, o, leaf=name.split(".")[-3]: calls.update([leaf]))
    step(model, model.config.hidden_size)
    return calls


def test_siblings_share_one_a_product(tiny_model, monkeypatch):
    path = tiny_model("qwen3")
    # By default every A product is made inside a group's node (engine/model/lora_group.py).
    assert a_calls(lora_model(path, monkeypatch, None)) == collections.Counter()
    shared = lora_model(path, monkeypatch, "nogroup")
    layers = shared.config.num_hidden_layers
    assert a_calls(shared) == {"o_proj": layers, "down_proj": layers}  # q/k/v and gate/up: one GEMM each
    loss, grads, _ = step(lora_model(path, monkeypatch, "nogroup"), 1)
    apart = lora_model(path, monkeypatch, "noshare")
    assert a_calls(apart) == {
        leaf: layers for leaf in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    }
    loss_a, grads_a, _ = step(lora_model(path, monkeypatch, "noshare"), 1)
    assert torch.allclose(loss, loss_a, rtol=1e-3)
    for name in grads:  # every A still gets its own gradient (the stacked weight's backward splits it)
        a, b = grads[name].flatten().double(), grads_a[name].flatten().double()
        assert b.norm() > 0 and (a - b).norm() <= 0.02 * b.norm(), name


@pytest.mark.parametrize("mode", [None, "nogroup"])
def test_lora_dropout_keeps_the_products_apart(tiny_model, monkeypatch, mode):
    model = lora_model(tiny_model("qwen3"), monkeypatch, mode, lora_dropout=0.1)
    model.train()
    assert set(a_calls(model)) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }


def test_sharded_training_keeps_peft_s_forward(tiny_model):
    """FSDP / ZeRO-3 gather each module's weights in its own hook: no fused forward there."""
    from transformers import AutoModelForCausalLM

    path = tiny_model("qwen3")
    config = RunConfig.model_validate(
        {
            "base_model": str(path),
            "datasets": [{"path": "x.jsonl"}],
            "adapter": "lora",
            "fsdp": ["full_shard"],
        }
    )
    assert config.uses_fsdp
    model = attach_lora(AutoModelForCausalLM.from_pretrained(path), config, False)
    assert not any("forward" in m.__dict__ for m in model.modules())


def test_one_layer_is_the_base_product_plus_the_scaled_b_product(tiny_model, monkeypatch):
    """A layer's output under autocast, worked out by hand from its weights: bf16 base product,
    bf16 A product, then B's product added at its scale in one GEMM (into the base output)."""
    model = lora_model(tiny_model("qwen3"), monkeypatch, None)
    layer = model.base_model.model.model.layers[0].self_attn.o_proj  # no siblings: its own A
    x = torch.randn(2, 5, layer.in_features, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(3))
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        got = layer(x)
    W = layer.get_base_layer().weight
    A, B = layer.lora_A["default"].weight.bfloat16(), layer.lora_B["default"].weight.bfloat16()
    flat = x.reshape(-1, x.shape[-1])
    want = torch.addmm(flat @ W.t(), flat @ A.t(), B.t(), alpha=layer.scaling["default"])
    assert got.dtype == torch.bfloat16 and torch.equal(got, want.view(got.shape))
