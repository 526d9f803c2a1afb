"""Every gathered real chat template (tests/templates/SOURCES), random conversations: the trained
tokens are exactly what tests/mask_props.py computes from the template's own rendering (each
reply from the generation prompt's end through the first stop token; nothing of a prompt, a
header or a tool result), and a reply with no stop token after it carries a note."""

from __future__ import annotations

from functools import cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.chat_tokenizers import TEMPLATES
from tests.mask_props import TOOLS, check, make_encoder, reasoning_key, tool_call
from tests.template_zoo import ZOO, build_zoo

WORDS = ["assistant", "user", "system", "tool", "model", "Paris", "think", "end", "é", "漢字", "🙂", "a"]
text = st.lists(
    st.one_of(st.sampled_from(WORDS), st.text("abcXYZ019.,!?-'", min_size=1, max_size=5)),
    min_size=1,
    max_size=4,
).map(" ".join)


@cache
def setup(name: str):
    z = ZOO[name]
    tok = build_zoo(name)
    stops = (z.eos, *z.stops, *z.eot)
    key = reasoning_key((TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8"))
    return tok, make_encoder(tok, stops, z.eot), stops, key


@st.composite
def conversation(draw, key: str | None):
    """A conversation with or without a system turn, with tool calls and their results, and
    reasoning on the final reply (in the template's field, or inline where it reads none)."""
    msgs = [{"role": "system", "content": draw(text)}] if draw(st.booleans()) else []
    tools = None
    for _ in range(draw(st.integers(1, 2))):
        msgs.append({"role": "user", "content": draw(text)})
        if draw(st.booleans()):
            tools = TOOLS
            call = {"role": "assistant", "content": "", "tool_calls": [tool_call(draw(text))]}
            msgs += [
                call,
                {"role": "tool", "content": draw(text), "tool_call_id": "abcDEF123", "name": "get_weather"},
            ]
        msgs.append({"role": "assistant", "content": draw(text)})
    if draw(st.booleans()):
        thought = draw(text)
        if key:
            msgs[-1][key] = thought
        else:
            msgs[-1]["content"] = f"<think>\n{thought}\n</think>\n\n{msgs[-1]['content']}"
    return msgs, tools


@pytest.mark.parametrize("name", sorted(ZOO))
@settings(max_examples=4, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_trained_tokens_follow_the_rule(name, data):
    tok, encoder, stops, key = setup(name)
    msgs, tools = data.draw(conversation(key))
    if ZOO[name].needs_tools and tools is None:
        tools = TOOLS
    verdict = check(tok, encoder, msgs, tools, stops)
    assert verdict.startswith(("ok", "n/a")), verdict


def test_the_gathered_templates_are_many_and_sourced():
    sources = (TEMPLATES / "SOURCES").read_text(encoding="utf-8")
    assert len(ZOO) >= 40
    for name in ZOO:
        assert f"{name}.jinja" in sources, name


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ZOO))
@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_trained_tokens_follow_the_rule_many_conversations(name, data):
    test_trained_tokens_follow_the_rule.hypothesis.inner_test(name, data)
