"""A bf16 base decodes one adapter merged into a copy of its adapted layers
(engine.chat.base_copy ``plan(..., merge=True)``), on CPU with ``LEVIATHAN_DECODE_MERGE=on``.

The reference is worked out apart from the engine: a second model of the same checkpoint whose
weights get ``W + scaling * B @ A`` by hand (rounded to bf16 once), answered base only.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from engine.chat import base_copy
from engine.chat.chat import stop_token_ids
from engine.chat.decode import Decoder
from engine.chat.generate import render
from engine.chat.routing import Route, lora_layers
from tests.test_generate import NEW, PROMPTS

LORA = dict(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)


def _load(path):
    from transformers import AutoModelForCausalLM

    from engine.model.siblings import relayout

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, local_files_only=True)
    relayout(model)  # as the training model is laid out (attach_lora)
    return model


def adapted(path, base) -> dict:
    """``base`` (loaded from ``path``) with a seeded random LoRA on every linear layer, in eval
    mode, with what a decode of the suite prompts needs (the 4-bit copy tests use it too)."""
    from peft import LoraConfig, get_peft_model

    from engine.model.model import load_tokenizer

    torch.manual_seed(0)
    model = get_peft_model(base, LoraConfig(**LORA))
    for n, p in model.named_parameters():
        if "lora_" in n:
            p.data.mul_(3.0)  # large enough to move a tiny model's argmax
    model.eval()
    tok = load_tokenizer(str(path))
    return dict(
        model=model,
        path=path,
        tok=tok,
        stops=stop_token_ids(tok, model),
        pad=tok.pad_token_id,
        rows=[render(tok, p) for p in PROMPTS],
    )


@pytest.fixture(scope="module", params=["qwen3", "llama"])
def bf16(request, tiny_model):
    path = tiny_model(request.param)
    return adapted(path, _load(path))


def _merged_by_hand(q):
    """The same checkpoint with the adapter merged into its weights here (fp32 sum, one rounding)."""
    twin = _load(q["path"]).eval()
    modules = dict(twin.named_modules())
    with torch.no_grad():
        for name, m in q["model"].get_base_model().named_modules():
            if hasattr(m, "lora_A") and "default" in m.lora_A:
                w = modules[name].weight
                A, B = m.lora_A["default"].weight.float(), m.lora_B["default"].weight.float()
                w.copy_((w.float() + m.scaling["default"] * (B @ A)).to(w.dtype))
    return twin


def _bytes(model):
    return {n: p.data.contiguous().view(torch.uint8).clone() for n, p in model.named_parameters()}


class Matmuls(TorchDispatchMode):
    n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        Matmuls.n += func.overloadpacket.__name__ in ("mm", "addmm", "addmm_", "matmul")
        return func(*args, **(kwargs or {}))


def merge_cost(decoder, model, rows, pad) -> int:
    """Matrix products of a 3-token call routed to "default" (the first: the merge happens)
    beyond a base-only call's: the merge's own, if no adapter product runs at any step."""
    counts = {}
    for names in (["default"] * len(rows), [None] * len(rows)):
        Matmuls.n = 0
        with Matmuls():
            decoder.run(rows, max_new_tokens=3, stop_ids=set(), pad_id=pad, route=Route(model, names))
        counts[names[0]] = Matmuls.n
    return counts["default"] - counts[None]


def test_one_adapter_decodes_merged_into_a_copy_and_the_model_is_untouched(bf16, monkeypatch):
    model, rows, stops, pad = bf16["model"], bf16["rows"], bf16["stops"], bf16["pad"]
    monkeypatch.setenv(base_copy.MERGE_ENV, "on")
    ref = Decoder(_merged_by_hand(bf16))
    want = ref.run(rows, max_new_tokens=NEW, stop_ids=stops, pad_id=pad).tokens
    ref.release()
    monkeypatch.setenv(base_copy.MERGE_ENV, "off")  # the engine's own base-only answers, no copy
    plain = Decoder(model)
    base_only = plain.run(
        rows, max_new_tokens=NEW, stop_ids=stops, pad_id=pad, route=Route(model, [None] * 3)
    )
    plain.release()
    monkeypatch.setenv(base_copy.MERGE_ENV, "on")
    assert plain._base is None and not base_only.notes
    base_only = base_only.tokens
    before = _bytes(model)

    d = Decoder(model)
    # The merge's own product once per adapted layer; no adapter product at any step.
    assert merge_cost(d, model, rows, pad) == len(lora_layers(model))

    res = d.run(rows, max_new_tokens=NEW, stop_ids=stops, pad_id=pad, route=Route(model, ["default"] * 3))
    assert any(n.startswith("bf16 base copied to merge the adapter into (") for n in res.notes)
    assert any("merged into the bf16 copy" in n for n in res.notes)
    copy = d._base[0]
    at = {id(m): w for m, w in zip(copy.layers, copy.weights, strict=True)}
    for m in lora_layers(model):
        base = m.get_base_layer()
        A, B = m.lora_A["default"].weight.float(), m.lora_B["default"].weight.float()
        expect = (base.weight.float() + m.scaling["default"] * (B @ A)).to(torch.bfloat16)
        assert torch.equal(at[id(base)], expect)
        assert at[id(base)].data_ptr() != base.weight.data_ptr()
    assert res.tokens == want
    # Back to the base: the copy holds the base's weights again and answers as the base.
    res = d.run(rows, max_new_tokens=NEW, stop_ids=stops, pad_id=pad, route=Route(model, [None] * 3))
    assert res.tokens == base_only
    for m, w in zip(copy.layers, copy.weights, strict=True):
        assert torch.equal(w, m.weight)
    d.release()
    after = _bytes(model)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_no_copy_without_one_adapter_or_when_turned_off(bf16, monkeypatch):
    model, rows, pad = bf16["model"], bf16["rows"], bf16["pad"]
    monkeypatch.setenv(base_copy.MERGE_ENV, "on")
    d = Decoder(model)
    for names in ([None] * 3, ["default", None, "default"]):  # the base; a compare batch
        res = d.run(rows, max_new_tokens=2, stop_ids=set(), pad_id=pad, route=Route(model, names))
        assert d._base is None and not any("copy" in n for n in res.notes)
    d.release()
    monkeypatch.setenv(base_copy.MERGE_ENV, "off")  # the switch: routed as before
    d = Decoder(model)
    res = d.run(rows, max_new_tokens=2, stop_ids=set(), pad_id=pad, route=Route(model, ["default"] * 3))
    assert d._base is None and not any("copy" in n for n in res.notes)
    d.release()
    monkeypatch.setenv(base_copy.MERGE_ENV, "on")
    d = Decoder(model, base="off")
    res = d.run(rows, max_new_tokens=2, stop_ids=set(), pad_id=pad, route=Route(model, ["default"] * 3))
    assert d._base[0] is None and "merged copy turned off" in res.notes[0]
    d.release()


def test_the_guard_routes_the_adapter_when_memory_is_short(bf16, monkeypatch):
    model, rows, pad = bf16["model"], bf16["rows"], bf16["pad"]
    monkeypatch.setenv(base_copy.MERGE_ENV, "on")
    size = base_copy.copy_bytes(base_copy.plain_layers(model), 2)
    d = Decoder(model, free_bytes=lambda: size)  # the copy alone, no margin: does not fit
    routed = d.run(rows, max_new_tokens=NEW, stop_ids=set(), pad_id=pad, route=Route(model, ["default"] * 3))
    assert d._base[0] is None
    assert routed.notes[0].startswith("adapter beside the bf16 base: a merged copy needs ")
    d.release()
    monkeypatch.setenv(base_copy.MERGE_ENV, "off")
    d = Decoder(model)
    plain = d.run(rows, max_new_tokens=NEW, stop_ids=set(), pad_id=pad, route=Route(model, ["default"] * 3))
    d.release()
    assert routed.tokens == plain.tokens


def test_the_estimate_counts_the_merged_copy_where_it_fits(bf16, write_config):
    from engine.config.config import load_config
    from engine.model.memory import COPY_MARGIN, base_copy_bytes, probe_bytes, with_probes

    model = bf16["model"]
    assert base_copy_bytes(model.config) == base_copy.copy_bytes(base_copy.plain_layers(model), 2)
    probes = {"on_save": ["identity"]}
    config, _ = load_config(write_config(bf16["path"], evaluation=probes))
    ev = config.evaluation
    decode = probe_bytes(model.config, ev.batch_size, ev.max_new_tokens)
    train, copy = 10 * 2**30, base_copy_bytes(model.config) + COPY_MARGIN
    fits = int((train + decode + copy) / 0.92) + 1
    assert with_probes(model.config, config, train, fits) == (train + decode + copy, copy)
    assert with_probes(model.config, config, train, fits - 1000) == (train + decode, 0)


def test_no_copy_when_an_adapted_layer_is_not_a_linear_one(tiny_model, monkeypatch):
    """LoRA on the embedding too: a copy of the linear layers could not hold the whole adapter,
    so none is made (the adapter stays routed, as without the switch)."""
    from peft import LoraConfig, get_peft_model

    monkeypatch.setenv(base_copy.MERGE_ENV, "on")
    path = tiny_model("qwen3")
    torch.manual_seed(0)
    model = get_peft_model(
        _load(path), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "embed_tokens"])
    ).eval()
    assert not base_copy.covers(model, base_copy.plain_layers(model), "default")
    d = Decoder(model)
    route = Route(model, ["default"])
    if route.supported:
        res = d.run([[3, 4, 5]], max_new_tokens=2, stop_ids=set(), pad_id=0, route=route)
        assert d._base is None and not any("copy" in n for n in res.notes)
    d.release()
