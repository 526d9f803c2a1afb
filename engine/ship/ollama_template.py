"""The model's Jinja chat template as Ollama's Go TEMPLATE, and the check that both render alike.

Templates are recognised by family (ChatML as in Qwen, Llama 3, Gemma) and start from that
family's Go template; two things the Jinja templates of one family vary in are then read off the
model's own template by rendering it: text it adds after the assistant opener of the generation
prompt (Qwen3's ``<think>\\n\\n``) and a system prompt it writes when the conversation has none
(Qwen2-VL's "You are a helpful assistant."). The result is checked by rendering a few
conversations (system or not, several turns) with the Jinja template and with the Go one as
Ollama fills it (engine/ship/gotemplate.py); a difference is an error, never a silent Modelfile.
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.errors import UserError

GEN = "{{/*gen*/}}"  # where the generation prompt's extra text goes; removed from the final template

CHATML_GO = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ .Content }}{{ if not $last }}<|im_end|>
{{ end }}
{{- end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{/*gen*/}}{{ end }}
{{- end }}"""

LLAMA3_GO = """{{- if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>
{{- end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|start_header_id|>user<|end_header_id|>

{{ .Content }}<|eot_id|>
{{- else if eq .Role "assistant" }}<|start_header_id|>assistant<|end_header_id|>

{{ .Content }}{{ if not $last }}<|eot_id|>{{ end }}
{{- end }}
{{- if and (ne .Role "assistant") $last }}<|start_header_id|>assistant<|end_header_id|>

{{/*gen*/}}{{ end }}
{{- end }}"""

# Gemma puts the system prompt at the head of the first user turn and calls the assistant "model";
# Ollama passes system messages in .Messages too, so the user turn after one continues it.
GEMMA_GO = """{{- $prev := "" }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "system" }}<start_of_turn>user
{{ .Content }}

{{ else if eq .Role "user" }}{{ if ne $prev "system" }}<start_of_turn>user
{{ end }}{{ .Content }}<end_of_turn>
{{ else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}{{ if not $last }}<end_of_turn>
{{ end }}
{{- end }}
{{- if and (ne .Role "assistant") $last }}<start_of_turn>model
{{/*gen*/}}{{ end }}
{{- $prev = .Role }}
{{- end }}"""

# family -> (markers that identify the Jinja template, Go template, stop strings)
FAMILIES = {
    "chatml": (("<|im_start|>", "<|im_end|>"), CHATML_GO, ["<|im_start|>", "<|im_end|>"]),
    "llama3": (("<|start_header_id|>", "<|eot_id|>"), LLAMA3_GO, ["<|start_header_id|>", "<|eot_id|>"]),
    "gemma": (("<start_of_turn>", "<end_of_turn>"), GEMMA_GO, ["<start_of_turn>", "<end_of_turn>"]),
}


def chat_template_of(model_dir: str | Path) -> str | None:
    """The chat template saved in a model folder (chat_template.jinja or tokenizer_config.json)."""
    d = Path(model_dir)
    if (d / "chat_template.jinja").is_file():
        return (d / "chat_template.jinja").read_text()
    for name in ("tokenizer_config.json", "chat_template.json"):
        try:
            value = json.loads((d / name).read_text()).get("chat_template")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(value, list):  # named templates: the default one
            value = next((t.get("template") for t in value if t.get("name") == "default"), None)
        if value:
            return value
    return None


def template_family(jinja: str | None) -> str | None:
    if not jinja:
        return None
    for family, (markers, _, _) in FAMILIES.items():
        if all(m in jinja for m in markers):
            return family
    return None


def translate(family: str, render) -> tuple[str, list[str], list[str]]:
    """(Go TEMPLATE, stop strings, what was read off the model's template) for ``family``."""
    from engine.ship.gotemplate import render_chat

    _, go, stops = FAMILIES[family]
    adapted = []
    probe = [{"role": "user", "content": "Who are you?"}]
    try:
        want = render(probe)
    except Exception:  # a template that refuses this conversation: the check afterwards says so
        return go.replace(GEN, ""), list(stops), adapted
    plain = render_chat(go.replace(GEN, ""), probe)
    if (
        family == "chatml"
        and want.startswith("<|im_start|>system\n")
        and not plain.startswith("<|im_start|>system")
    ):
        default = want[len("<|im_start|>system\n") : want.find("<|im_end|>")]
        go = go.replace(
            "{{ .System }}<|im_end|>\n{{ end }}",
            "{{ .System }}<|im_end|>\n{{ else }}<|im_start|>system\n" + default + "<|im_end|>\n{{ end }}",
            1,
        )
        adapted.append(f"its default system prompt {default!r} when there is none")
        plain = render_chat(go.replace(GEN, ""), probe)
    if want.startswith(plain) and len(want) > len(plain) and "{{" not in want[len(plain) :]:
        extra = want[len(plain) :]
        go = go.replace(GEN, extra)
        adapted.append(f"{extra!r} after the generation prompt")
    return go.replace(GEN, ""), list(stops), adapted


# Conversations the translated TEMPLATE must render exactly as the model's Jinja template does.
CHECK_CONVERSATIONS = [
    [{"role": "user", "content": "Who are you?"}],
    [{"role": "system", "content": "You are Leviathan."}, {"role": "user", "content": "Who are you?"}],
    [
        {"role": "system", "content": "You are Leviathan."},
        {"role": "user", "content": "Who are you?"},
        {"role": "assistant", "content": "I am Leviathan."},
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


def template_mismatches(go_template: str, render_jinja, conversations=CHECK_CONVERSATIONS) -> list[str]:
    """Conversations whose Ollama rendering (engine/ship/gotemplate.py) differs from ``render_jinja``'s;
    one the Jinja template itself refuses (e.g. Gemma's first template takes no system turn) is skipped."""
    from engine.ship.gotemplate import render_chat

    bad = []
    for messages in conversations:
        try:
            want = render_jinja(messages)
        except Exception:  # the template's own raise_exception: not a conversation this model takes
            continue
        got = render_chat(go_template, messages)
        if got != want:
            bad.append(
                f"{len(messages)} messages: Ollama would send {got!r}, the model was trained on {want!r}"
            )
    return bad


def jinja_renderer(src: Path):
    """messages -> the prompt the model's tokenizer renders (generation prompt on, BOS left out:
    llama.cpp and Ollama add BOS when they tokenize)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(src), local_files_only=True)

    def render(messages):
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text.removeprefix(tok.bos_token or "")

    return render


def check_translation(src: Path, go_template: str, render) -> None:
    """The translated TEMPLATE renders like the model's own template, or a UserError says where not."""
    bad = template_mismatches(go_template, render)
    if bad:
        raise UserError(
            f"{src}: the chat template's Ollama translation renders differently from the model's own: {bad[0]}",
            "give a TEMPLATE with --template FILE (Ollama Go template syntax), or --no-template",
        )
