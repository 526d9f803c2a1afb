"""Sibling LoRA layers as one autograd node (engine/model/lora_group.py): the input gradient is
written once (no add of input-sized gradients in the backward), the numbers are the layers' own
(checked against a float64 computation by hand), and nothing outlives the layer."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from engine.config.config import RunConfig
from engine.model import lora_autocast
from engine.model.model import attach_lora


class Adds(TorchDispatchMode):
    """Counts out-of-place adds whose result is ``width`` wide (input-sized gradients summed)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width, self.n = width, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if (
            func is torch.ops.aten.add.Tensor
            and isinstance(out, torch.Tensor)
            and out.shape[-1] == self.width
        ):
            self.n += 1
        return out


class Attn(torch.nn.Module):
    def __init__(self, hidden: int, kv: int) -> None:
        super().__init__()
        self.q_proj = torch.nn.Linear(hidden, hidden, bias=True)
        self.k_proj = torch.nn.Linear(hidden, kv, bias=True)
        self.v_proj = torch.nn.Linear(hidden, kv, bias=True)
        self.o_proj = torch.nn.Linear(hidden, hidden, bias=False)

    def forward(self, x):
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        return self.o_proj(q * 0.5 + torch.cat([k, v], dim=-1).repeat(1, 1, q.shape[-1] // (2 * k.shape[-1])))


def block(mode: str | None, monkeypatch, hidden=64, kv=16, r=8, alpha=24):
    from peft import LoraConfig, get_peft_model

    if mode:
        monkeypatch.setenv(lora_autocast.ENV, mode)
    else:
        monkeypatch.delenv(lora_autocast.ENV, raising=False)
    torch.manual_seed(0)
    base = Attn(hidden, kv).to(torch.bfloat16)
    model = get_peft_model(
        base, LoraConfig(r=r, lora_alpha=alpha, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    )
    g = torch.Generator().manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.copy_(torch.randn(p.shape, generator=g) * 0.1)
    lora_autocast.fuse_lora_layers(model)
    return model


def run(model, x, weight):
    x = x.clone().requires_grad_(True)
    adds = Adds(x.shape[-1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    with adds:
        (out.float() * weight).sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return out, x.grad, grads, adds.n


def reference(model, x, weight):
    """The block's output and gradients in float64, from its weights by hand."""
    lin = {}
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        m = getattr(model.base_model.model, name)
        base = m.get_base_layer()
        W = base.weight.double().requires_grad_(False)
        b = None if base.bias is None else base.bias.double()
        A = m.lora_A["default"].weight.detach().double().requires_grad_(True)
        B = m.lora_B["default"].weight.detach().double().requires_grad_(True)
        lin[name] = (W, b, A, B, m.scaling["default"])

    def f(name, inp):
        W, b, A, B, s = lin[name]
        y = inp @ W.T + s * (inp @ A.T) @ B.T
        return y if b is None else y + b

    xd = x.double().requires_grad_(True)
    q, k, v = f("q_proj", xd), f("k_proj", xd), f("v_proj", xd)
    out = f("o_proj", q * 0.5 + torch.cat([k, v], dim=-1).repeat(1, 1, q.shape[-1] // (2 * k.shape[-1])))
    (out * weight.double()).sum().backward()
    grads = {}
    for name, (_, _, A, B, _) in lin.items():
        grads[f"base_model.model.{name}.lora_A.default.weight"] = A.grad
        grads[f"base_model.model.{name}.lora_B.default.weight"] = B.grad
    return out, xd.grad, grads


def close(a, b, tol):
    a, b = a.double().flatten(), b.double().flatten()
    return (a - b).norm() <= tol * b.norm()


def test_one_node_writes_the_input_gradient_once_and_matches_float64(monkeypatch):
    x = torch.randn(2, 12, 64, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    weight = torch.randn(2, 12, 64, generator=torch.Generator().manual_seed(3))
    grouped = block(None, monkeypatch)
    assert all(
        lora_autocast.FusedForward is type(m.__dict__.get("forward")) and m.forward.group is not None
        for m in grouped.modules()
        if hasattr(m, "lora_A")
    )
    out, dx, grads, adds = run(grouped, x, weight)
    ref_out, ref_dx, ref_grads = reference(grouped, x, weight)
    # q, k, v and their A product: one gradient of x, no adds of x-sized gradients
    assert adds == 0
    assert close(out, ref_out, 0.01)
    assert close(dx, ref_dx, 0.02)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        assert grads[name].dtype == torch.float32
        assert close(grads[name], ref_grads[name], 0.02), name
    # each layer its own node: autograd sums the four gradients of x (three adds) and o's two
    apart = block("nogroup", monkeypatch)
    out_a, dx_a, grads_a, adds_a = run(apart, x, weight)
    assert adds_a >= 3 + 1
    assert torch.equal(out, out_a)  # the same GEMMs in the same order: the forward bit for bit
    assert close(dx, dx_a, 0.01)
    for name in grads:
        assert close(grads[name], grads_a[name], 0.01), name


def test_no_output_is_held_after_the_layer(monkeypatch):
    model = block(None, monkeypatch)
    x = torch.randn(1, 5, 64).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x)
    groups = {id(m.forward.group): m.forward.group for m in model.modules() if hasattr(m, "lora_A")}
    assert len(groups) == 2  # q/k/v together, o alone
    assert all(g._outs == () and g._key is None for g in groups.values())


def test_an_input_changed_in_place_is_computed_again(monkeypatch):
    """A cached product is keyed by the input and its version, not by its address alone."""
    model = block(None, monkeypatch)
    attn = model.base_model.model
    x = torch.randn(1, 5, 64).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        q1 = attn.q_proj(x)
        x.mul_(2)
        k2 = attn.k_proj(x)  # a new input: the group computes again
        q2 = attn.q_proj(x)
        k_ref = attn.k_proj(x)
    assert torch.equal(k2, k_ref) and not torch.equal(q1, q2)


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_gradient_checkpointing_gives_the_same_gradients(tiny_model, monkeypatch, arch):
    """The recomputed forward goes through the group node again and the gradients agree."""
    from transformers import AutoModelForCausalLM

    monkeypatch.delenv(lora_autocast.ENV, raising=False)
    path = tiny_model(arch)
    ids = torch.arange(3, 40).reshape(1, -1)
    results = []
    for gc in (False, True):
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
        config = RunConfig.model_validate(
            {"base_model": str(path), "datasets": [{"path": "x.jsonl"}], "adapter": "lora", "lora_r": 8}
        )
        model = attach_lora(base, config, gc)
        model.train()
        g = torch.Generator().manual_seed(1)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.data.copy_(torch.randn(p.shape, generator=g) * 0.05)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids % model.config.vocab_size, labels=ids % model.config.vocab_size).loss
        loss.backward()
        results.append(
            (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
        )
    (l0, g0), (l1, g1) = results
    assert torch.equal(l0, l1)
    assert g0.keys() == g1.keys()
    for name in g0:
        assert torch.equal(g0[name], g1[name]), name


def test_a_forward_cut_short_lets_go_of_its_graph_when_forgotten(monkeypatch):
    """An OOM between q and k leaves the group holding k and v (and the graph behind them);
    ``lora_autocast.forget`` (the OOM guard calls it before the retry) lets them go."""
    import gc
    import weakref

    model = block(None, monkeypatch)
    attn = model.base_model.model
    x = torch.randn(1, 5, 64).to(torch.bfloat16).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        attn.q_proj(x)  # the forward "fails" here: k and v never ask for theirs
    group = attn.k_proj.forward.group
    held = weakref.ref(group._outs[1])
    assert held() is not None
    lora_autocast.forget(model)
    gc.collect()
    assert held() is None and group._outs == ()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # and the next forward computes afresh
        k = attn.k_proj(x)
    assert k.shape[-1] == 16


def test_outputs_can_be_changed_in_place_downstream(monkeypatch):
    """Some models scale or rotate a projection in place; a view made inside a custom Function
    may not be, so the group returns tensors of their own, and the gradients stay right."""
    x = torch.randn(1, 5, 64).to(torch.bfloat16)
    outs = []
    for mode in (None, "nogroup"):
        model = block(mode, monkeypatch)
        attn = model.base_model.model
        xg = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            q, k = attn.q_proj(xg), attn.k_proj(xg)
            assert mode is not None or not q._is_view()  # ungrouped: a plain autograd view
            q.mul_(0.5)  # in place, as some attention code does
            loss = q.float().sum() + k.float().pow(2).sum()
        loss.backward()
        outs.append((xg.grad, attn.q_proj.lora_B["default"].weight.grad))
    (dx, dB), (dx_a, dB_a) = outs
    assert close(dx, dx_a, 0.01) and close(dB, dB_a, 0.01)
