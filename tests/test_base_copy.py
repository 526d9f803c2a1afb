"""A 4-bit base decodes on a bf16 copy of its weights (engine.chat.base_copy), on CPU.

Tiny random Qwen3 and Llama models are loaded 4-bit through transformers' bitsandbytes
loading with the project's own quantization settings (``engine.model.model.quantization_config``:
NF4, double quantization, bf16 compute and storage), given a PEFT LoRA with non-zero B, and
answered greedily through the engine on the copy and on bitsandbytes' 4-bit product, and
through a plain bf16 model whose weights are the NF4 values dequantized here by hand from the
format's definition, with the same LoRA, in PEFT's ``generate`` (the reference).

PEFT's ``generate`` on the 4-bit model itself is the reference for the base alone (its logits
equal the hand-dequantized model's bit for bit), not with the adapter: PEFT's bitsandbytes
LoRA layer rounds the adapter's product to bf16 before adding it, its plain ``Linear`` (and
the engine on CPU) adds it in float32, and on a tiny random Llama that moves the argmax.
"""

from __future__ import annotations

import gc
import re
import weakref

import pytest
import torch

pytest.importorskip("bitsandbytes", reason="bitsandbytes: pip install -e '.[test]' (or '.[gpu]')")

from engine.chat import base_copy  # noqa: E402
from engine.chat.decode import Decoder  # noqa: E402
from engine.chat.generate import release, run_rows  # noqa: E402
from engine.chat.routing import Route  # noqa: E402
from tests.test_generate import NEW, _reference  # noqa: E402
from tests.test_merged_copy import LORA, adapted, merge_cost  # noqa: E402

# NF4's 16 values (Dettmers et al., "QLoRA", 2023; bitsandbytes/functional.py, get_4bit_type("nf4")).
NF4 = [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982251167297,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
]


def _load_4bit(path):
    from transformers import AutoModelForCausalLM

    from engine.model.model import quantization_config

    model = AutoModelForCausalLM.from_pretrained(
        path,
        dtype=torch.bfloat16,
        quantization_config=quantization_config(4),
        device_map={"": "cpu"},
        local_files_only=True,
    )
    # On a CPU with AVX512-BF16, bitsandbytes repacks a 4-bit weight into its own CPU layout at
    # the first forward in eval mode; off, the weights keep the layout they have on a GPU.
    for m in base_copy.four_bit_layers(model):
        m.support_avx512bf16_for_cpu = False
    return model


@pytest.fixture(scope="module", params=["qwen3", "llama"])
def qlora(request, tiny_model):
    path = tiny_model(request.param)
    return adapted(path, _load_4bit(path))


def _nf4_by_hand(layer) -> torch.Tensor:
    """The weight NF4 stores: per 64-value block, the code's value times the block's absmax;
    with double quantization the absmaxes are 8-bit codes times their own 256-block scale plus
    an offset. Two values a byte, the high nibble first."""
    qs = layer.weight.quant_state
    absmax = qs.absmax
    if qs.nested:
        s2 = qs.state2
        idx = torch.arange(absmax.numel()) // s2.blocksize
        absmax = s2.code[absmax.long()].float() * s2.absmax[idx] + qs.offset
    packed = layer.weight.data.view(torch.uint8).reshape(-1)
    codes = torch.stack([packed >> 4, packed & 0xF], dim=1).reshape(-1).long()
    n = layer.in_features * layer.out_features
    values = torch.tensor(NF4, dtype=torch.float32)[codes[:n]]
    scale = absmax.float()[torch.arange(n) // qs.blocksize]
    return (values * scale).to(torch.bfloat16).view(layer.out_features, layer.in_features)


def _hand_dequantized_twin(q):
    """A plain bf16 model of the same checkpoint, its 4-bit layers' weights set to the NF4 values
    worked out by hand, with the same LoRA weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(q["path"], dtype=torch.bfloat16, local_files_only=True)
    core = q["model"].get_base_model()
    modules = dict(plain.named_modules())
    four_bit = {id(m) for m in base_copy.four_bit_layers(core)}
    for name, m in core.named_modules():
        if id(m) in four_bit:
            modules[name.removesuffix(".base_layer")].weight.data.copy_(_nf4_by_hand(m))
    twin = get_peft_model(plain, LoraConfig(**LORA))
    lora = {n: p for n, p in q["model"].named_parameters() if "lora_" in n}
    for n, p in twin.named_parameters():
        if "lora_" in n:
            p.data.copy_(lora[n].data)
    return twin.eval()


def _state(model):
    return (
        # Bytes: a 4-bit weight stored as bf16 holds NaN patterns (NaN != NaN in values).
        {
            n: (p.data.contiguous().view(torch.uint8).clone(), p.requires_grad)
            for n, p in model.named_parameters()
        },
        [m.training for m in model.modules()],
    )


def test_the_copy_is_the_nf4_weights_worked_out_by_hand(qlora):
    layers = base_copy.four_bit_layers(qlora["model"])
    assert len(layers) == 7 * qlora["model"].config.num_hidden_layers
    made = base_copy.BaseCopy.make(layers)
    for m, w in zip(layers, made.weights, strict=True):
        assert w.dtype == torch.bfloat16 and torch.equal(w, _nf4_by_hand(m))
    assert made.bytes == base_copy.copy_bytes(layers)


def test_greedy_on_the_copy_equals_4bit_peft_and_the_hand_dequantized_model(qlora):
    model, rows, stops, pad = qlora["model"], qlora["rows"], qlora["stops"], qlora["pad"]
    before = _state(model)
    twin = _hand_dequantized_twin(qlora)
    want = [_reference(twin, r, stops, pad) for r in rows]
    with model.disable_adapter():
        base_only = [_reference(model, r, stops, pad) for r in rows]  # PEFT's generate on the 4-bit model
    assert base_only != want  # the adapter matters

    got = {}
    for base in ("on", "off"):
        d = Decoder(model, base=base)
        res = d.run(rows, max_new_tokens=NEW, stop_ids=stops, pad_id=pad, route=Route(model, ["default"] * 3))
        got[base] = res.tokens
        assert len(res.notes) == 1 and ("on a bf16 copy" in res.notes[0]) == (base == "on")
        d.release()
    assert got["on"] == want
    assert got["off"] == want  # bitsandbytes' own 4-bit product, the same values
    for base in ("on", "off"):
        d = Decoder(model, base=base)
        res = d.run(rows, max_new_tokens=NEW, stop_ids=stops, pad_id=pad, route=Route(model, [None] * 3))
        assert res.tokens == base_only
        d.release()

    # The training model is as it was: 4-bit weights, adapter, flags, modes, forwards.
    after = _state(model)
    assert after[1] == before[1]
    for n, (data, flag) in before[0].items():
        assert torch.equal(after[0][n][0], data) and after[0][n][1] == flag, n
    assert not any("forward" in m.__dict__ for m in model.modules())


def test_the_guard_keeps_the_4bit_path_when_memory_is_short(qlora):
    model, rows, stops, pad = qlora["model"], qlora["rows"], qlora["stops"], qlora["pad"]
    cfg = model.config
    copy = 2 * sum(m.in_features * m.out_features for m in base_copy.four_bit_layers(model))  # bf16
    assert max(len(r) for r in rows) + NEW <= 256  # one cache bucket: 256 positions
    kv = 2 * len(rows) * 256 * cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * cfg.head_dim
    need = copy + 2**30 + kv  # the copy, the margin, the KV cache the first forward allocates
    short = Decoder(model, base="on", free_bytes=lambda: need - 1)
    res = short.run(rows, max_new_tokens=NEW, stop_ids=stops, pad_id=pad, route=Route(model, ["default"] * 3))
    assert short._base[0] is None
    assert res.notes == [
        f"4-bit base decoded in 4-bit: a bf16 copy needs {copy / 2**20:.1f} MiB + 1.00 GiB margin + "
        f"{kv / 2**20:.1f} MiB KV cache, {(need - 1) / 2**30:.2f} GiB free"
    ]
    enough = Decoder(model, base="on", free_bytes=lambda: need)
    res2 = enough.run(
        rows, max_new_tokens=NEW, stop_ids=stops, pad_id=pad, route=Route(model, ["default"] * 3)
    )
    assert enough._base[0] is not None and "decoded on a bf16 copy" in res2.notes[0]
    assert res.tokens == res2.tokens
    short.release()
    enough.release()


def test_release_frees_the_copy_and_the_next_call_makes_it_again(qlora):
    model, rows, stops, pad = qlora["model"], qlora["rows"], qlora["stops"], qlora["pad"]
    d = Decoder(model, base="on")
    first = d.run(rows, max_new_tokens=NEW, stop_ids=stops, pad_id=pad, route=Route(model, ["default"] * 3))
    copy = d._base[0]
    weights = [weakref.ref(w) for w in copy.weights]
    assert d.base_note is not None
    del copy
    d.release()
    gc.collect()
    assert all(w() is None for w in weights)  # nothing else holds it: not a module, not a graph
    assert d.base_note is None
    again = d.run(rows, max_new_tokens=NEW, stop_ids=stops, pad_id=pad, route=Route(model, ["default"] * 3))
    assert again.tokens == first.tokens and "decoded on a bf16 copy" in again.notes[0]
    d.release()


def test_run_rows_says_which_path_ran(qlora, monkeypatch):
    model, rows, stops, pad = qlora["model"], qlora["rows"], qlora["stops"], qlora["pad"]
    res = run_rows(model, rows, max_new_tokens=4, stop_ids=stops, pad_id=pad)
    assert res.notes == ["4-bit base decoded in 4-bit (bf16 copy not on CPU unless asked)"]
    release(model)
    monkeypatch.setenv(base_copy.ENV, "on")
    on = run_rows(model, rows, max_new_tokens=4, stop_ids=stops, pad_id=pad)
    assert on.tokens == res.tokens and on.notes[0].startswith("4-bit base decoded on a bf16 copy")
    release(model)
    monkeypatch.setenv(base_copy.ENV, "off")
    assert run_rows(model, rows, max_new_tokens=4, stop_ids=stops, pad_id=pad).notes == [
        "4-bit base decoded in 4-bit (bf16 copy turned off)"
    ]
    release(model)
    monkeypatch.setenv(base_copy.ENV, "yes")
    with pytest.raises(ValueError, match="LEVIATHAN_DECODE_BASE_COPY='yes': one of"):
        run_rows(model, rows, max_new_tokens=4, stop_ids=stops, pad_id=pad)
    release(model)


def test_a_probe_record_says_which_path_the_4bit_base_took(qlora, tmp_path, write_config, monkeypatch):
    """A probe on the 4-bit model (as at a QLoRA run's save): its record says the base decoded
    on the copy, and the copy is gone when the probe returns (training takes the memory back)."""
    from engine.chat.generate import base_note
    from engine.config.config import load_config
    from engine.evaluate.probes import Probes
    from engine.run.events import RunLog, read_events

    config, _ = load_config(
        write_config(qlora["path"], evaluation={"on_save": ["identity"], "max_new_tokens": 4})
    )
    checkpoint = tmp_path / "out" / "checkpoint-1"
    checkpoint.mkdir(parents=True)
    log = RunLog(tmp_path / "logs" / "events.jsonl")
    monkeypatch.setenv(base_copy.ENV, "on")
    scores = Probes(config, tmp_path / "logs", log).run(qlora["model"], qlora["tok"], str(checkpoint), step=1)
    assert isinstance(scores["identity"], float)
    probe = [r for r in read_events(log.path).records if r["kind"] == "probe"]
    assert len(probe) == 1 and probe[0]["decode"].startswith("4-bit base decoded on a bf16 copy ("), probe
    assert base_note(qlora["model"]) is None  # released with the probe's engine
    monkeypatch.setenv(base_copy.ENV, "off")
    Probes(config, tmp_path / "logs", log).run(qlora["model"], qlora["tok"], str(checkpoint), step=2)
    probe = [r for r in read_events(log.path).records if r["kind"] == "probe"]
    decode = probe[-1]["decode"]
    assert decode.startswith("4-bit base decoded in 4-bit (bf16 copy turned off); prompts "), decode
    # Where the time went: at most max_new_tokens - 1 steps after the prompt's token.
    steps = int(re.search(r"(\d+) steps in ", decode).group(1))
    assert 1 <= steps <= 3
    assert set(probe[-1]["parts"]) == {"setup", "answers", "release"}
    assert probe[-1]["seconds"] >= sum(probe[-1]["parts"].values()) - 0.01


def test_a_live_chat_says_which_path_the_4bit_base_took(qlora, monkeypatch):
    """A chat with the live weights of a QLoRA run: the answer's notes say the base decoded on
    its bf16 copy, and training's model is left without it."""
    from engine.chat.chat import LIVE, Done, Request, Settings
    from engine.chat.generate import base_note
    from engine.chat.on_training import chat_on_training_model

    monkeypatch.setenv(base_copy.ENV, "on")
    events: list = []
    request = Request("Who are you?", [LIVE], Settings(max_new_tokens=4))
    done = chat_on_training_model(
        qlora["model"], qlora["tok"], request, events.append, base_name=str(qlora["path"])
    )
    assert isinstance(done, Done), events[-1]
    assert len(done.notes) == 1 and done.notes[0].startswith("4-bit base decoded on a bf16 copy (")
    assert base_note(qlora["model"]) is None


def test_the_estimate_counts_the_copy_where_it_fits_and_only_there(qlora, write_config):
    from engine.config.config import load_config
    from engine.model.memory import COPY_MARGIN, base_copy_bytes, probe_bytes, with_probes

    model = qlora["model"]
    made = base_copy.BaseCopy.make(base_copy.four_bit_layers(model))
    assert base_copy_bytes(model.config) == made.bytes  # the estimate's figure is the engine's copy

    probes = {"on_save": ["identity"]}
    config, _ = load_config(write_config(qlora["path"], adapter="qlora", evaluation=probes))
    assert config.quant_bits == 4
    ev = config.evaluation
    decode = probe_bytes(model.config, ev.batch_size, ev.max_new_tokens)
    train, copy = 10 * 2**30, made.bytes + COPY_MARGIN
    fits = int((train + decode + copy) / 0.92) + 1
    assert with_probes(model.config, config, train, fits) == (train + decode + copy, copy)
    # No room for it: not counted, so it cannot turn checkpointing on (the engine keeps 4-bit then).
    assert with_probes(model.config, config, train, fits - 1000) == (train + decode, 0)
    lora, _ = load_config(write_config(qlora["path"], "lora.yaml", evaluation=probes))
    # A bf16 LoRA base merges the probed adapter into a copy of the same size (tests/test_merged_copy.py).
    assert with_probes(model.config, lora, train, fits) == (train + decode + copy, copy)
    none, _ = load_config(write_config(qlora["path"], "none.yaml", adapter="qlora"))
    assert with_probes(model.config, none, train, fits) == (train, None)


def test_a_4bit_model_without_adapters_decodes_on_its_copy(qlora):
    """No PEFT wrapper (no route): the base layers are the model's own 4-bit layers."""
    model, rows, stops, pad = _load_4bit(qlora["path"]).eval(), qlora["rows"], qlora["stops"], qlora["pad"]
    want = [_reference(model, r, stops, pad) for r in rows]
    d = Decoder(model, base="on")
    res = d.run(rows, max_new_tokens=NEW, stop_ids=stops, pad_id=pad)
    assert res.tokens == want and res.notes[0].startswith("4-bit base decoded on a bf16 copy (")
    d.release()


def test_siblings_are_copied_back_to_back_and_answer_the_same(qlora, monkeypatch):
    """q/k/v and gate/up copied into one tensor each (one product a decode step): the same
    NF4 values, and greedy answers equal the layer-by-layer copy's."""
    from engine.chat.sibling_products import ENV
    from engine.model import siblings

    model, rows, stops, pad = qlora["model"], qlora["rows"], qlora["stops"], qlora["pad"]
    layers = base_copy.four_bit_layers(model)
    groups = siblings.groups(model, plain=False)
    assert len(groups) == 2 * model.config.num_hidden_layers
    assert sorted(len(g) for g in groups) == sorted([2, 3] * model.config.num_hidden_layers)
    made = base_copy.BaseCopy.make(layers, groups)
    at = {id(m): w for m, w in zip(layers, made.weights, strict=True)}
    for g in groups:
        assert siblings.fused_view([at[id(m)] for m in g]) is not None
    for m, w in zip(layers, made.weights, strict=True):
        assert torch.equal(w, _nf4_by_hand(m))
    got = {}
    for env in ("off", "on"):
        monkeypatch.setenv(ENV, env)
        d = Decoder(model, base="on")
        got[env] = d.run(
            rows, max_new_tokens=NEW, stop_ids=stops, pad_id=pad, route=Route(model, ["default"] * 3)
        )
        d.release()
    assert got["on"].tokens == got["off"].tokens


def test_one_adapter_is_merged_into_the_copy_and_taken_out_again(qlora, monkeypatch):
    """A route to one adapter over the copy decodes as a merged model: the copy holds
    W + scaling * B @ A (worked out here from the NF4 values and the adapter), no adapter product
    runs a step, the answers are the adapter's; a base route afterwards finds the base again."""

    model, rows, stops, pad = qlora["model"], qlora["rows"], qlora["stops"], qlora["pad"]
    monkeypatch.setenv(base_copy.MERGE_ENV, "on")
    # The reference: the hand-dequantized twin with the adapter merged by hand (rounded once).
    twin = _hand_dequantized_twin(qlora)
    with torch.no_grad():
        for m in twin.modules():
            if hasattr(m, "lora_A") and "default" in m.lora_A:
                w = m.get_base_layer().weight
                A, B = m.lora_A["default"].weight.float(), m.lora_B["default"].weight.float()
                w.copy_((w.float() + m.scaling["default"] * (B @ A)).to(w.dtype))
    ref = Decoder(twin)  # the same engine on the plain bf16 twin, base only: merged weights alone
    want = ref.run(rows, max_new_tokens=NEW, stop_ids=stops, pad_id=pad, route=Route(twin, [None] * 3)).tokens
    ref.release()
    with model.disable_adapter():
        base_only = [_reference(model, r, stops, pad) for r in rows]

    from engine.chat.routing import lora_layers

    d = Decoder(model, base="on")
    # The merge's own product, once per adapted layer; no adapter product at any step after it.
    assert merge_cost(d, model, rows, pad) == len(lora_layers(model))

    res = d.run(rows, max_new_tokens=NEW, stop_ids=stops, pad_id=pad, route=Route(model, ["default"] * 3))
    assert any("merged into the bf16 copy" in n for n in res.notes)
    copy = d._base[0]
    layers = {id(m): (m, w) for m, w in zip(copy.layers, copy.weights, strict=True)}
    for m in lora_layers(model):
        base, w = layers[id(m.get_base_layer())]
        A, B = m.lora_A["default"].weight.float(), m.lora_B["default"].weight.float()
        expect = (_nf4_by_hand(base).float() + m.scaling["default"] * (B @ A)).to(torch.bfloat16)
        assert torch.equal(w, expect)
    assert res.tokens == want
    res = d.run(rows, max_new_tokens=NEW, stop_ids=stops, pad_id=pad, route=Route(model, [None] * 3))
    assert res.tokens == base_only
    for m, w in zip(copy.layers, copy.weights, strict=True):
        assert torch.equal(w, _nf4_by_hand(m))  # dequantized again: exactly the base
    d.release()


def test_no_merge_when_the_copy_does_not_hold_every_adapted_layer(qlora, monkeypatch):
    """LoRA on ``lm_head`` too (bf16 there, not 4-bit): merged into the copy of the 4-bit layers
    alone, the base-only route would drop lm_head's adapter. The route stays routed, and answers
    as with the merge turned off."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(
        _load_4bit(qlora["path"]),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "lm_head"], init_lora_weights=False),
    )
    for n, p in model.named_parameters():
        if "lora_" in n:
            p.data.mul_(3.0)
    model.eval()
    assert not base_copy.covers(model, base_copy.four_bit_layers(model), "default")
    rows, stops, pad = qlora["rows"], qlora["stops"], qlora["pad"]
    got = {}
    for env in ("off", "on"):
        monkeypatch.setenv(base_copy.MERGE_ENV, env)
        d = Decoder(model, base="on")
        got[env] = d.run(
            rows, max_new_tokens=NEW, stop_ids=stops, pad_id=pad, route=Route(model, ["default"] * 3)
        )
        d.release()
    assert not any("merged into" in n for n in got["on"].notes)
    assert got["on"].tokens == got["off"].tokens
