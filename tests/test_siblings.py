"""Sibling projections (q/k/v, gate/up) laid out back to back and decoded as one product.

Tiny random Qwen3 and Llama (fp32, CPU) go through the real loading code. The counts are of
matrix products the model asks ATen for (``mm``/``addmm``/``linear``'s decompositions), seen
by a dispatch mode, so they do not depend on how the code under test counts its own work.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from engine.chat.decode import Decoder
from engine.chat.generate import release
from engine.chat.sibling_products import ENV, SiblingProducts
from engine.model import siblings
from engine.model.loading import load_for_inference
from engine.model.lora_autocast import SIBLINGS

ROWS = [[5, 6, 7, 8, 9], [11, 12, 13], [20, 21, 22, 23]]
MATMULS = {"mm", "addmm", "addmm_", "bmm", "matmul"}


class CountMatmuls(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in MATMULS:
            self.n += 1
        return func(*args, **(kwargs or {}))


def _expected_groups(model) -> list[list[str]]:
    """The sibling groups by name, worked out from the model's module names."""
    names = {n for n, _ in model.named_modules()}
    out = []
    for n in sorted(names):
        for sib in SIBLINGS:
            present = [f"{n}.{leaf}" for leaf in sib if f"{n}.{leaf}" in names]
            if len(present) >= 2:
                out.append(present)
    return out


@pytest.fixture(params=["qwen3", "llama"])
def loaded(request, tiny_model):
    return load_for_inference(str(tiny_model(request.param)), device="cpu")


def test_loading_lays_siblings_back_to_back_with_every_weight_kept(loaded, tiny_model):
    from transformers import AutoModelForCausalLM

    model = loaded.model
    fresh = AutoModelForCausalLM.from_pretrained(loaded.base, dtype=model.dtype, local_files_only=True).eval()
    groups = _expected_groups(model)
    assert len(groups) == 2 * model.config.num_hidden_layers
    modules = dict(model.named_modules())
    for names in groups:
        weights = [modules[n].weight for n in names]
        whole = siblings.fused_view(weights)
        assert whole is not None, names
        assert torch.equal(whole, torch.cat([dict(fresh.named_parameters())[f"{n}.weight"] for n in names]))
        assert all(
            w.is_contiguous() and w.requires_grad == fresh.get_parameter(f"{n}.weight").requires_grad
            for n, w in zip(names, weights, strict=True)
        )
    ids = torch.tensor(ROWS[0])[None]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, fresh(ids).logits)  # each layer's own product, as before


def _decode(model, env: str, monkeypatch, new: int = 10):
    monkeypatch.setenv(ENV, env)
    release(model)
    d = Decoder(model)
    d.run(ROWS, max_new_tokens=2, stop_ids=set(), pad_id=0)  # planned, warmed
    counter = CountMatmuls()
    with counter:
        res = d.run([ROWS[0]], max_new_tokens=2, stop_ids=set(), pad_id=0)
    full = [d.run([r], max_new_tokens=new, stop_ids=set(), pad_id=0).tokens for r in ROWS]  # one row: grouped
    d.release()
    return counter.n, res, full


def test_a_decode_step_computes_each_group_in_one_product_and_answers_the_same(loaded, monkeypatch):
    model = loaded.model
    n_groups = len(_expected_groups(model))
    saved = sum(len(g) - 1 for g in _expected_groups(model))
    off, _, want = _decode(model, "off", monkeypatch)
    on, _, got = _decode(model, "on", monkeypatch)
    # Two forwards: the prefill (5 rows: each layer its own) and one decode step (one row: grouped).
    assert off - on == saved, (off, on, n_groups)
    assert got == want
    assert not any("forward" in m.__dict__ for m in model.modules())  # put back after the call


def test_many_rows_keep_each_layers_own_product(loaded, monkeypatch):
    model = loaded.model
    long_row = [list(range(3, 3 + siblings.SMALL_ROWS + 4))]
    counts = {}
    for env in ("off", "on"):
        monkeypatch.setenv(ENV, env)
        release(model)
        d = Decoder(model, mode="eager")
        products = SiblingProducts(model, torch.device("cpu"))
        assert bool(products) == (env == "on")
        counter = CountMatmuls()
        with torch.no_grad(), products, counter:
            model(torch.tensor(long_row))
        counts[env] = counter.n
        d.release()
    assert counts["on"] == counts["off"]


def test_a_shared_product_is_made_again_for_a_new_or_changed_input():
    torch.manual_seed(0)
    whole = torch.randn(10, 6)
    parts = [whole[:4], whole[4:7], whole[7:]]
    biases = [torch.randn(4), None, torch.randn(3)]
    fwd = siblings.forwards(list(zip(parts, biases, strict=True)), siblings.fused_view(parts))
    x = torch.randn(1, 2, 6)

    def each():
        return [f(x) for f in fwd]

    def want():
        return [torch.nn.functional.linear(x, w, b) for w, b in zip(parts, biases, strict=True)]

    for got, ref in zip(each(), want(), strict=True):
        torch.testing.assert_close(got, ref)
    x.mul_(2.0)  # the same tensor, changed in place: not the products of before
    for got, ref in zip(each(), want(), strict=True):
        torch.testing.assert_close(got, ref)
    siblings.forget(fwd)
    assert "x" not in fwd[0].shared


def test_weights_apart_are_not_a_group():
    a, b = torch.randn(4, 6), torch.randn(3, 6)
    assert siblings.fused_view([a, b]) is None
    whole = torch.randn(7, 6)
    assert siblings.fused_view([whole[3:], whole[:3]]) is None  # out of order
    assert siblings.fused_view([whole[:3], whole[3:]]) is not None


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_a_routed_adapter_on_laid_out_siblings_is_three_products_a_group(tiny_model, arch):
    """One row through a LoRA route on siblings laid back to back: the base weight, the stacked A
    and the block-diagonal B of a whole group are three GEMMs, and the logits are PEFT's."""
    from peft import LoraConfig, get_peft_model

    from engine.chat.decode import core_model
    from engine.chat.routing import Route

    model = load_for_inference(str(tiny_model(arch)), device="cpu").model
    torch.manual_seed(0)
    model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    )
    for n, p in model.named_parameters():
        if "lora_" in n:
            p.data.mul_(3.0)
    model.eval()
    core = core_model(model)
    layers = core.config.num_hidden_layers
    counts, logits = {}, {}
    for ids in (torch.tensor([[7]]), torch.tensor([[7, 8, 9]])):
        with torch.no_grad():
            want = core(input_ids=ids).logits  # PEFT's own forward
            for group in (False, True):
                counter = CountMatmuls()
                with Route(model, ["default"], group=group), counter:
                    logits[group] = core(input_ids=ids).logits
                counts[group, ids.shape[1]] = counter.n
        torch.testing.assert_close(logits[True], want, rtol=1e-4, atol=1e-4)
        assert torch.equal(logits[False], want)
    # Per layer, ungrouped: q/k/v 3 base + 3 A + 3 B, gate/up 2 + 2 + 2; one row grouped: 3 + 3.
    assert counts[False, 1] - counts[True, 1] == (9 - 3 + 6 - 3) * layers
    # Three rows: each layer its own base and B, the A products shared (q/k/v 3 -> 1, gate/up 2 -> 1).
    assert counts[False, 3] - counts[True, 3] == (2 + 1) * layers
