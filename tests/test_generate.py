"""The generation engine's greedy answers equal plain transformers ``generate``, token for token.

On tiny random models of the three architectures, with and without LoRA adapters, one
prompt at a time and batched (left-padded rows of different lengths), and for compare
(rows through different adapters in one batch). The reference is ``model.generate`` on
each prompt alone (dynamic cache, PEFT's own adapter path).
"""

from __future__ import annotations

import pytest
import torch

from engine.chat.chat import stop_token_ids
from engine.chat.generate import release, run_rows

PROMPTS = ["Who are you?", "Tell me a long story about the sea, the ships and the storm.", "hi"]
NEW = 12


def _load(path):
    from engine.model.loading import load_for_inference

    loaded = load_for_inference(str(path), device="cpu")
    return loaded.model, loaded.tokenizer


def _rows(tok):
    out = []
    for p in PROMPTS:
        ids = tok.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True, return_dict=False
        )
        out.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))
    return out


def _reference(model, row, stops, pad):
    ids = torch.tensor([row])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=NEW,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            eos_token_id=sorted(stops),
            pad_token_id=pad,
        )
    got = out[0, len(row) :].tolist()
    return got[: next((i for i, t in enumerate(got) if t in stops), len(got))]


def _with_adapters(model):
    """Two random LoRA adapters (B not zero, so each changes the answers)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    cfg = dict(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(model, LoraConfig(**cfg), adapter_name="one")
    model.add_adapter("two", LoraConfig(**{**cfg, "target_modules": ["q_proj", "v_proj"]}))
    for n, p in model.named_parameters():
        if "lora_" in n:
            p.data.mul_(3.0)  # large enough to move a tiny model's argmax
    model.eval()
    return model


@pytest.mark.parametrize("arch", ["qwen3", "llama", "qwen3_vl"])
def test_greedy_equals_hf_generate_plain(tiny_model, arch):
    model, tok = _load(tiny_model(arch))
    stops = stop_token_ids(tok, model)
    pad = tok.pad_token_id if tok.pad_token_id is not None else min(stops)
    rows = _rows(tok)
    want = [_reference(model, r, stops, pad) for r in rows]
    batched = run_rows(model, rows, max_new_tokens=NEW, stop_ids=stops, pad_id=pad)
    assert batched.tokens == want
    assert batched.mode == "eager" and batched.first_token_s is not None
    for r, w in zip(rows, want, strict=True):
        assert run_rows(model, [r], max_new_tokens=NEW, stop_ids=stops, pad_id=pad).tokens == [w]
    release(model)


@pytest.mark.parametrize("arch", ["qwen3", "llama", "qwen3_vl"])
def test_greedy_equals_hf_generate_with_adapters(tiny_model, arch):
    model, tok = _load(tiny_model(arch))
    model = _with_adapters(model)
    stops = stop_token_ids(tok, model)
    pad = tok.pad_token_id if tok.pad_token_id is not None else min(stops)
    rows = _rows(tok)
    want = {}
    for name in ("one", "two"):
        model.set_adapter(name)
        want[name] = [_reference(model, r, stops, pad) for r in rows]
    with model.disable_adapter():
        want[None] = [_reference(model, r, stops, pad) for r in rows]
    model.set_adapter("one")
    assert want["one"] != want[None] and want["two"] != want[None]  # the adapters matter
    flags = {n: p.requires_grad for n, p in model.named_parameters()}

    for name in ("one", "two", None):  # one target for the batch, and each prompt alone
        got = run_rows(model, rows, max_new_tokens=NEW, stop_ids=stops, pad_id=pad, names=[name] * 3)
        assert got.tokens == want[name], name
        alone = run_rows(model, rows[:1], max_new_tokens=NEW, stop_ids=stops, pad_id=pad, names=[name])
        assert alone.tokens == want[name][:1]
    # Compare: each row through its own adapter, in one batch.
    for i, row in enumerate(rows):
        got = run_rows(
            model, [row] * 3, max_new_tokens=NEW, stop_ids=stops, pad_id=pad, names=["one", None, "two"]
        )
        assert got.tokens == [want["one"][i], want[None][i], want["two"][i]]
    # Nothing about the model changed: active adapter, flags, forwards.
    assert model.active_adapter == "one"
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert not any("forward" in m.__dict__ for m in model.modules())
    release(model)


def test_unsupported_adapter_falls_back_to_hf_generate(tiny_model):
    from peft import LoraConfig, get_peft_model

    model, tok = _load(tiny_model("qwen3"))
    torch.manual_seed(0)
    model = get_peft_model(
        model, LoraConfig(r=4, target_modules=["q_proj"], use_dora=True, init_lora_weights=False)
    )
    model.eval()
    stops = stop_token_ids(tok, model)
    pad = tok.pad_token_id
    rows = _rows(tok)
    want = _reference(model, rows[0], stops, pad)
    got = run_rows(model, rows[:1], max_new_tokens=NEW, stop_ids=stops, pad_id=pad)
    assert got.mode == "hf-generate" and "DoRA" in got.notes[0]
    assert got.tokens == [want]


def _two_adapters(tiny_model, targets: list[str], **lora):
    """A tiny Qwen3 with adapters "one" (active) and "two", random and large enough to matter."""
    from peft import LoraConfig, get_peft_model

    model, tok = _load(tiny_model("qwen3"))
    torch.manual_seed(0)
    config = LoraConfig(r=4, target_modules=targets, init_lora_weights=False, **lora)
    model = get_peft_model(model, config, adapter_name="one")
    model.add_adapter("two", config)
    for n, p in model.named_parameters():
        if "lora_" in n:
            p.data.mul_(3.0)
    model.eval()
    model.set_adapter("one")
    return model, tok


def test_an_adapter_on_the_embedding_falls_back_with_its_own_rows(tiny_model):
    """An embedding's LoRA is not routed: the engine would have left PEFT's embedding forward in
    place, adding the *active* adapter's delta to a row routed to another. PEFT's own path
    answers instead, and a row routed to the inactive adapter gets that adapter's answer."""
    model, tok = _two_adapters(tiny_model, ["q_proj", "embed_tokens"])
    stops, pad, rows = stop_token_ids(tok, model), tok.pad_token_id, _rows(tok)
    got = run_rows(model, rows[:1], max_new_tokens=NEW, stop_ids=stops, pad_id=pad, names=["two"])
    assert got.mode == "hf-generate" and "Embedding" in got.notes[0]
    model.set_adapter("two")
    want = _reference(model, rows[0], stops, pad)  # PEFT's own answer with "two" active
    model.set_adapter("one")
    assert got.tokens == [want]


def test_the_slow_path_answers_for_the_target_not_the_active_adapter(tiny_model):
    """DoRA takes PEFT's path: a row routed to the inactive adapter, or to the base, gets that
    target's answer, and the model is left as it was (active adapter, trainable flags)."""
    model, tok = _two_adapters(tiny_model, ["q_proj", "v_proj"], use_dora=True)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    stops, pad, rows = stop_token_ids(tok, model), tok.pad_token_id, _rows(tok)
    model.set_adapter("two")
    want_two = _reference(model, rows[0], stops, pad)
    model.set_adapter("one")
    with model.disable_adapter():
        want_base = _reference(model, rows[0], stops, pad)
    want_one = _reference(model, rows[0], stops, pad)
    assert len({tuple(want_two), tuple(want_base), tuple(want_one)}) == 3  # the targets differ
    for names, want in ((["two"], want_two), ([None], want_base), (["one"], want_one)):
        got = run_rows(model, rows[:1], max_new_tokens=NEW, stop_ids=stops, pad_id=pad, names=names)
        # The base touches no DoRA layer: the engine itself answers that row.
        assert (got.mode == "hf-generate") == (names[0] is not None) and got.tokens == [want], names
        assert model.active_adapter == "one"
        assert {n: p.requires_grad for n, p in model.named_parameters()} == flags


def test_sampling_and_stop(tiny_model):
    model, tok = _load(tiny_model("qwen3"))
    stops = stop_token_ids(tok, model)
    rows = _rows(tok)
    seen = []
    got = run_rows(
        model,
        rows,
        max_new_tokens=NEW,
        stop_ids=set(),
        pad_id=tok.pad_token_id,
        temperature=0.8,
        top_p=0.9,
        on_token=lambda row, t: seen.append((row, t)),
        should_stop=lambda: len(seen) >= 6,
    )
    assert [len(t) for t in got.tokens] == [2, 2, 2]  # the first token, then one step, then stopped
    assert all(0 <= t < len(tok) for row in got.tokens for t in row)
    assert stops  # the tokenizer has stop tokens, so the test above stopped on request, not on one


@pytest.mark.parametrize("arch", ["qwen3", "llama", "qwen3_vl"])
def test_grouped_a_products_compute_peft_s_lora(tiny_model, arch):
    """Sibling layers (q/k/v, gate/up) share one product for their A matrices (the CUDA path):
    the same logits as PEFT's own forward, on CPU up to float rounding."""
    from engine.chat.decode import core_model
    from engine.chat.routing import Route

    model, tok = _load(tiny_model(arch))
    model = _with_adapters(model)
    ids = torch.tensor(_rows(tok)[1:2])
    core = core_model(model)
    with torch.no_grad():
        model.set_adapter("one")
        want = core(input_ids=ids).logits
        route = Route(model, ["one"], group=True)
        with route:
            got = core(input_ids=ids).logits
        layers = core.config.get_text_config().num_hidden_layers
        assert len(route._groups) == 5 * layers  # q, k, v and gate, up of every decoder layer
        assert not any("x" in shared for shared, _ in route._groups.values())  # let go after
        with Route(model, ["one"], group=False):
            plain = core(input_ids=ids).logits
    assert torch.equal(plain, want)  # ungrouped: PEFT's arithmetic exactly
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)  # addmm rounds once, not twice


@pytest.mark.parametrize("path", ["engine", "hf-generate"])
def test_chat_rate_is_the_decode_rate_seen_as_tokens_come(tiny_model, path):
    """The figure under an answer: tokens after the first over the time after the first, as the
    tokens reach the caller (on both paths: the engine, and ``model.generate`` for a DoRA adapter,
    whose tokens once all came after the call and gave a rate of tens of thousands a second)."""
    import time

    from peft import LoraConfig, get_peft_model

    from engine.chat.chat import Request, Settings, generate

    model, tok = _load(tiny_model("qwen3"))
    if path == "hf-generate":
        torch.manual_seed(0)
        cfg = LoraConfig(r=4, target_modules=["q_proj"], use_dora=True, init_lora_weights=False)
        model = get_peft_model(model, cfg)
        model.eval()
    seen: list[float] = []  # when each delta reached the sink, on this test's clock
    request = Request("Who are you?", ["x"], Settings(temperature=0, max_new_tokens=48))
    t0 = time.perf_counter()
    (answer,) = generate(model, tok, request, None, lambda ev: seen.append(time.perf_counter()))
    wall = time.perf_counter() - t0
    assert answer.tokens > 8 and len(seen) > 2
    # Deltas streamed while it generated: spread over the call, not bunched after it.
    assert seen[-1] - seen[0] > 0.25 * wall
    # The rate is no faster than the tokens the caller saw arrive, and the first token's
    # latency is its own figure (a part of the call).
    assert answer.tokens_per_s <= (answer.tokens - 1) / (seen[-1] - seen[0]) * 1.5
    assert 0 < answer.first_token_s < wall
    release(model)


def test_the_decode_note_counts_the_calls_since_release(tiny_model):
    from engine.chat.decode import Decoder

    model, tok = _load(tiny_model("qwen3"))
    rows = _rows(tok)
    d = Decoder(model)
    assert d.path_note is None
    for n in (1, 2):
        d.run(rows, max_new_tokens=5, stop_ids=set(), pad_id=0)
        assert f"{4 * n} steps in " in d.path_note  # no stop token: 4 steps after each prompt's token
    d.release()
    assert d.path_note is None
