"""The Go text/template evaluator (engine/ship/gotemplate.py) and the Jinja -> Ollama TEMPLATE
translation, checked on the bundled chat templates (Axolotl's files, engine/config/chat_templates)."""

from __future__ import annotations

import pytest

from engine.config import chat_templates
from engine.errors import UserError
from engine.ship.gotemplate import ollama_values, render, render_chat
from engine.ship.ollama_template import check_translation, template_family, template_mismatches, translate

# Expected outputs are Go's documented text/template behaviour (pkg.go.dev/text/template):
# "{{- " trims all whitespace before, " -}}" after; and/or return an argument; $x = assigns.
GO_CASES = [
    ("a  {{- 1 -}}  b", {}, "a1b"),
    ("{{ if .A }}x{{ else if .B }}y{{ else }}z{{ end }}", {"A": "", "B": [1]}, "y"),
    ("{{ if .A }}x{{ else if .B }}y{{ else }}z{{ end }}", {"A": 0, "B": []}, "z"),
    ("{{ range $i, $m := .L }}{{ $i }}={{ $m.N }};{{ end }}", {"L": [{"N": "a"}, {"N": "b"}]}, "0=a;1=b;"),
    ("{{ range .L }}{{ . }}{{ else }}empty{{ end }}", {"L": []}, "empty"),
    ('{{ or .A "dflt" }}|{{ and .B .C }}', {"A": "", "B": "b", "C": "c"}, "dflt|c"),
    (
        "{{ len (slice .L 1) }} {{ index .L 2 }} {{ eq .X 1 2 3 }} {{ ne .X 3 }}",
        {"L": [5, 6, 7], "X": 3},
        "2 7 true false",
    ),
    ('{{ $p := "" }}{{ range .L }}{{ $p }}>{{ . }} {{ $p = . }}{{ end }}', {"L": ["a", "b"]}, ">a a>b "),
    ("{{ if not .A }}{{ $.B }}{{ end }}", {"A": False, "B": "top"}, "top"),
]


@pytest.mark.parametrize("source,data,want", GO_CASES)
def test_go_template_semantics(source, data, want):
    assert render(source, data) == want


@pytest.mark.parametrize(
    "source", ["{{ with .A }}x{{ end }}", '{{ printf "%s" .A }}', "{{ if .A }}x", "x{{ end }}"]
)
def test_outside_the_subset_is_refused_not_guessed(source):
    with pytest.raises(ValueError):
        render(source, {"A": "a"})


def test_ollama_values_collate_like_ollama():
    """template.go collate: system messages joined for .System and kept in .Messages; consecutive
    messages of one role merged with a blank line."""
    v = ollama_values(
        [
            {"role": "system", "content": "S1"},
            {"role": "system", "content": "S2"},
            {"role": "user", "content": "a"},
            {"role": "user", "content": "b"},
        ]
    )
    assert v["System"] == "S1\n\nS2"
    assert v["Messages"] == [{"Role": "system", "Content": "S1\n\nS2"}, {"Role": "user", "Content": "a\n\nb"}]


CONVERSATIONS = [
    [{"role": "user", "content": "Who are you?"}],
    [{"role": "system", "content": "You are Leviathan."}, {"role": "user", "content": "Who are you?"}],
    [
        {"role": "system", "content": "You are Leviathan."},
        {"role": "user", "content": "Who are you?"},
        {"role": "assistant", "content": "I am Leviathan, the Abyssal Mind."},
        {"role": "user", "content": "What is 2 plus 2?"},
    ],
    [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "Name three colours."},
        {"role": "assistant", "content": "Red, green, blue."},
        {"role": "user", "content": "Thanks"},
    ],
]
TRANSLATED = [
    "chatml",
    "falcon_h1",
    "gemma",
    "gemma3",
    "gemma3n",
    "llama3",
    "nemotron_h",
    "qwen2_vl",
    "qwen3",
    "qwen3_5",
    "qwen_25",
]
REFUSED = ["phi_4", "llama3_2_vision"]  # ChatML/Llama 3 markers, but <|im_sep|> / a dated system turn


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model("llama"))  # has every family's markers as text


def _renderer(tok, jinja):
    def render_jinja(messages):
        text = tok.apply_chat_template(
            messages, chat_template=jinja, tokenize=False, add_generation_prompt=True
        )
        return text.removeprefix(tok.bos_token)

    return render_jinja


def test_every_bundled_template_is_translated_or_refused():
    families = {n: template_family(chat_templates.template(n)) for n in chat_templates.names()}
    assert sorted(n for n, f in families.items() if f) == sorted(TRANSLATED + REFUSED)


@pytest.mark.parametrize("name", TRANSLATED)
def test_translated_template_renders_like_the_bundled_jinja(name, tokenizer):
    jinja = chat_templates.template(name)
    render_jinja = _renderer(tokenizer, jinja)
    go, stops, _ = translate(template_family(jinja), render_jinja)
    rendered = 0
    for messages in CONVERSATIONS:
        try:
            want = render_jinja(messages)
        except Exception:  # Gemma's first template refuses a system turn
            continue
        assert render_chat(go, messages) == want
        rendered += 1
    assert rendered >= 2 and stops


@pytest.mark.parametrize("name", REFUSED)
def test_a_template_that_does_not_translate_is_refused(name, tokenizer, tmp_path):
    jinja = chat_templates.template(name)
    render_jinja = _renderer(tokenizer, jinja)
    go, _, _ = translate(template_family(jinja), render_jinja)
    assert template_mismatches(go, render_jinja)
    with pytest.raises(UserError, match="renders differently"):
        check_translation(tmp_path, go, render_jinja)
