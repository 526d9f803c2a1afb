"""Loss masks on ten real chat templates (tests/templates/SOURCES), on tiny offline tokenizers.

Every expected value is built from the messages and from what each template is known to write
(tests/chat_tokenizers.py, by hand from reading the template): the trained text of a reply is
the reply plus the template's end-of-turn marker, never something read back from the encoder.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.data.mask_locate import _fast, locate, locate_all
from engine.data.masks import BadRow, ChatEncoder, MaskOptions
from tests.chat_tokenizers import SPECS, build

NAMES = sorted(SPECS)
_built: dict = {}
_skeletons: dict = {}  # per template, shared by the examples as a worker shares it by rows


def encoder(name: str) -> ChatEncoder:
    if name not in _built:  # once per module: tokenizer training is the slow part
        _built[name] = ChatEncoder(build(name))
    return _built[name]


def trained_spans(tok, ids, labels) -> list[str]:
    """Decoded maximal runs of trained tokens (special tokens kept)."""
    out, run = [], []
    for i, lab in zip(ids, labels, strict=True):
        if lab != -100:
            assert lab == i
            run.append(i)
        elif run:
            out.append(tok.decode(run))
            run = []
    if run:
        out.append(tok.decode(run))
    return out


# Qwen3 writes an empty <think> block into the turns after the last user message: the model
# writes it after the generation prompt, so it is trained (TRL's generation markers agree)
QWEN3_OWN = {"qwen3": "<think>\n\n</think>\n\n"}


def expected(name: str, convo: list[dict]) -> list[str]:
    """Each assistant reply with what the model writes around it, by the template's known form."""
    spec = SPECS[name]
    lead = " " if name == "mistral_v3" else ""  # Mistral writes `[/INST]` + " " + reply
    head = "<think>\n\n</think>\n\n" if name == "qwen3_generation" else ""  # inside {% generation %}
    replies = [k for k, m in enumerate(convo) if m["role"] == "assistant"]
    last_user = max((k for k, m in enumerate(convo) if m["role"] == "user"), default=-1)
    own = QWEN3_OWN.get(name, "")
    out = [lead + head + (own if k > last_user else "") + convo[k]["content"] + spec.marker for k in replies]
    if spec.final_eos and convo[-1]["role"] == "assistant":
        out.append(spec.final_eos)
    return out


def convo_for(name: str, replies: list[str], system: str | None = "You are Leviathan.") -> list[dict]:
    msgs = [{"role": "system", "content": system}] if system and SPECS[name].system else []
    for i, r in enumerate(replies):
        msgs += [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": r}]
    return msgs


def run(name: str, convo: list[dict], **opts):
    enc = encoder(name)
    out = enc.encode_row(convo, MaskOptions(**opts))
    return out, trained_spans(enc.tok, out.input_ids, out.labels)


@pytest.mark.parametrize("name", NAMES)
def test_multi_turn_with_system_prompt(name):
    convo = convo_for(name, ["Paris is the capital of France.", "I am Leviathan, the Abyssal Mind."])
    out, spans = run(name, convo)
    assert spans == expected(name, convo)
    text = encoder(name).tok.decode(out.input_ids)
    assert "Question 0?" in text and "Question 1?" in text


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("reply", ["a", "im", "t", "S", "model", "user", "assistant", "system", "end"])
def test_short_replies_that_occur_in_the_template_text(name, reply):
    convo = convo_for(name, [reply, reply])
    assert run(name, convo)[1] == expected(name, convo)


def test_template_notes_say_what_happened_to_the_system_turn():
    # Mistral v0.3 writes the system prompt only into a last user turn: with a reply last, it is gone.
    out, _ = run("mistral_v3", convo_for("mistral_v3", ["Fine."], system="SYSTEM-TEXT"))
    assert "the template leaves out the system turn" in out.notes
    assert "SYSTEM-TEXT" not in encoder("mistral_v3").tok.decode(out.input_ids)
    # Gemma 3 folds the system prompt into the first user turn.
    out, _ = run("gemma3", convo_for("gemma3", ["Fine."]))
    assert "the template merges the system turn into the next turn" in out.notes
    out, _ = run("qwen3", convo_for("qwen3", ["Fine."]))
    assert out.notes == []


def test_a_template_that_refuses_a_row_gives_its_own_message():
    with pytest.raises(BadRow, match="System role not supported"):
        encoder("gemma2").encode_row(
            [
                {"role": "system", "content": "s"},
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a"},
            ]
        )


# ---- reasoning ---------------------------------------------------------------------------

THINK = [
    {"role": "user", "content": "Q1?"},
    {"role": "assistant", "content": "<think>\nold thought\n</think>\n\nA1."},
    {"role": "user", "content": "Q2?"},
    {"role": "assistant", "content": "<think>\nnew thought\n</think>\n\nA2."},
]
FIELD = [
    {"role": "user", "content": "Q1?"},
    {"role": "assistant", "content": "A1.", "reasoning_content": "old thought"},
    {"role": "user", "content": "Q2?"},
    {"role": "assistant", "content": "A2.", "reasoning_content": "new thought"},
]


@pytest.mark.parametrize("name", ["qwen3", "deepseek_r1_distill"])
def test_inline_think_blocks_in_every_turn(name):
    marker = SPECS[name].marker
    out, spans = run(name, THINK)
    # The final reply keeps its reasoning; earlier turns are trained as the template renders
    # them (both templates strip old reasoning; DeepSeek keeps what follows `</think>`).
    # DeepSeek's generation prompt is `<｜Assistant｜>` and the newline after its `}}`: the model
    # writes only the second newline.
    earlier = "A1." if name == "qwen3" else "\nA1."
    assert spans == [earlier + marker, THINK[3]["content"] + marker]
    assert any("earlier assistant turn" in n for n in out.notes)


@pytest.mark.parametrize("name", ["qwen3", "llama3_1", "deepseek_r1_distill", "gemma3"])
def test_reasoning_content_field_is_trained_on_the_final_reply(name):
    marker = SPECS[name].marker
    out, spans = run(name, FIELD)
    assert spans == ["A1." + marker, "<think>\nnew thought\n</think>\n\nA2." + marker]
    if name != "qwen3":  # Qwen3 renders the field itself; the others never write it
        assert any("final reply's reasoning" in n for n in out.notes)


def test_generation_markers_decide_the_assistant_span():
    out, spans = run("qwen3_generation", THINK)
    assert spans == [m["content"] + "<|im_end|>\n" for m in THINK if m["role"] == "assistant"]


# ---- what carries loss -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["qwen3", "phi3_5"])
def test_train_on_eos(name):
    spec = SPECS[name]
    convo = convo_for(name, ["One.", "Two."], system="Sys.")
    m, eos = spec.marker, spec.final_eos
    two = QWEN3_OWN.get(name, "") + "Two."
    assert run(name, convo, train_on_eos="none")[1] == ["One.", two]
    assert run(name, convo, train_on_eos="last")[1] == ["One.", two + m] + ([eos] if eos else [])
    assert run(name, convo, train_on_eos="turn")[1] == expected(name, convo)
    # all: the end tokens of every turn, the user's and the system's too (never their text)
    assert run(name, convo, train_on_eos="all")[1] == [m, m, "One." + m, m, two + m] + ([eos] if eos else [])


@pytest.mark.parametrize("name", ["qwen3", "llama3_1", "mistral_v3"])
def test_roles_to_train_and_train_on_inputs(name):
    convo = convo_for(name, ["One."], system=None)
    m = SPECS[name].marker
    lead = " " if name == "mistral_v3" else ""
    user_end = m if name != "mistral_v3" else ""  # Mistral's user turn ends with [/INST], no marker
    both = [convo[0]["content"] + user_end, lead + QWEN3_OWN.get(name, "") + "One." + m]
    assert run(name, convo, roles_to_train=("user", "assistant"))[1] == both
    assert run(name, convo, train_on_inputs=True)[1] == both
    assert run(name, convo, roles_to_train=())[1] == []


def test_per_message_training_flags():
    convo = convo_for("qwen3", ["One.", "Two."], system=None)
    convo[1] = {**convo[1], "training": False}
    convo[2] = {**convo[2], "train": True}
    assert run("qwen3", convo)[1] == ["Question 1?<|im_end|>", QWEN3_OWN["qwen3"] + "Two.<|im_end|>"]
    convo[3] = {**convo[3], "weight": 0}
    assert run("qwen3", convo, field_training="weight")[1] == ["One.<|im_end|>"]


# ---- property: any conversation ----------------------------------------------------------

WORDS = [
    "a",
    "im",
    "t",
    "S",
    "model",
    "user",
    "assistant",
    "end",
    "Paris",
    "think",
    "INST",
    "é",
    "漢字",
    "🙂",
]
reply = st.lists(
    st.one_of(st.sampled_from(WORDS), st.text("abcXYZ019.,!?-'", min_size=1, max_size=6)),
    min_size=1,
    max_size=6,
).map(lambda ws: " ".join(ws).strip())
reply_with_newlines = st.lists(reply, min_size=1, max_size=3).map("\n".join)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(replies=st.lists(reply_with_newlines, min_size=1, max_size=3), system=st.booleans())
def test_trained_spans_are_the_replies_and_their_markers(name, replies, system):
    convo = convo_for(name, replies, system="You are Leviathan." if system else None)
    out, spans = run(name, convo)
    assert spans == expected(name, convo)
    assert len(out.input_ids) == len(out.labels)
    # The one-render fast path, where it applies, finds what the per-message re-render finds.
    enc = encoder(name)
    text = enc.render(convo)[0]
    fast = _fast(enc.render, convo, text)
    assert fast is None or fast == [locate(enc.render, convo, k, text) for k in range(len(convo))]
    # Rows of one shape share the skeleton rendering: kept across examples, it finds the same.
    assert _fast(enc.render, convo, text, _skeletons.setdefault(name, {})) == fast


@pytest.mark.parametrize("name", ["qwen3", "llama3_1"])
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(replies=st.lists(reply_with_newlines, min_size=1, max_size=3))
def test_offsets_that_leave_out_the_space_a_token_carries(name, replies):
    # GPT-2's ByteLevel post-processor trims offsets: " Paris" reports only "Paris", and a lone
    # whitespace token (Llama 3's "\n\n" after a header) reports an empty span at the next
    # token's start. Each still owns the characters since the previous token.
    key = f"trimmed-{name}"
    if key not in _built:
        _built[key] = ChatEncoder(build(name, trim_offsets=True))
    enc = _built[key]
    convo = convo_for(name, replies)
    out = enc.encode_row(convo)
    assert trained_spans(enc.tok, out.input_ids, out.labels) == expected(name, convo)


@settings(max_examples=15, deadline=None)
@given(replies=st.lists(reply, min_size=1, max_size=3))
def test_generation_template_agrees_with_transformers_assistant_mask(replies):
    # transformers' own return_assistant_tokens_mask is an independent oracle for this template.
    enc = encoder("qwen3_generation")
    convo = convo_for("qwen3_generation", replies)
    out = enc.encode_row(convo)
    ref = enc.tok.apply_chat_template(
        convo, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    assert out.input_ids == list(ref["input_ids"])
    assert [lab != -100 for lab in out.labels] == [bool(m) for m in ref["assistant_masks"]]


@pytest.mark.parametrize("name", ["qwen3", "deepseek_r1_distill", "llama3_1"])
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    thoughts=st.lists(reply_with_newlines, min_size=2, max_size=2),
    answers=st.lists(reply, min_size=2, max_size=2),
)
def test_reasoning_of_the_final_reply_is_always_trained(name, thoughts, answers):
    convo = convo_for(name, answers, system=None)
    convo[-1] = {**convo[-1], "reasoning_content": thoughts[1]}
    convo[1] = {**convo[1], "content": f"<think>\n{thoughts[0]}\n</think>\n\n{answers[0]}"}
    marker = SPECS[name].marker
    spans = run(name, convo)[1]
    assert spans[-1] == f"<think>\n{thoughts[1]}\n</think>\n\n{answers[1]}" + marker
    # The earlier turn as its template renders it: Llama 3.1 verbatim, Qwen3 without the
    # reasoning, DeepSeek what follows `</think>` (less the newline its generation prompt holds).
    first = {"llama3_1": convo[1]["content"], "qwen3": answers[0], "deepseek_r1_distill": f"\n{answers[0]}"}
    assert spans[0] == first[name] + marker


@pytest.mark.parametrize("name", NAMES)
def test_a_stale_skeleton_never_misplaces_a_turn(name):
    # A template whose output changes by itself (a date) leaves a kept skeleton stale: here every
    # kept skeleton is another template's. The regions are still the exact method's.
    convo = convo_for(name, ["Paris.", "It is the capital."], system=None)
    enc, other = encoder(name), encoder("smollm3" if name != "smollm3" else "llama3_1")
    text = enc.render(convo)[0]
    stale: dict = {}
    _fast(other.render, convo, other.render(convo)[0], stale)
    assert stale, "the other template's skeleton was kept"
    exact = [locate(enc.render, convo, k, text) for k in range(len(convo))]
    assert locate_all(enc.render, convo, text, stale) == exact
