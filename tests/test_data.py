"""Row formats, file:line validation, and the assistant-only loss mask."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from engine.data.data import BadRow, ChatEncoder, parse_row, read_rows
from tests.conftest import cli_here, write_jsonl

# A template in the style of Qwen3's: assistant turns after the last user turn get an
# empty think block, and nothing marks the generation.
QWEN3_STYLE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' and loop.last %}"
    "{{ '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% else %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

CONVO = [
    {"role": "system", "content": "You are Leviathan."},
    {"role": "user", "content": "Who are you?"},
    {"role": "assistant", "content": "I am Leviathan, the Abyssal Mind."},
    {"role": "user", "content": "What is 7 times 6?"},
    {"role": "assistant", "content": "7 times 6 is 42."},
]


@pytest.fixture(params=["qwen3", "llama", "qwen3-style-template"])
def tokenizer(request, tiny_model):
    arch = "qwen3" if request.param.startswith("qwen3") else request.param
    tok = AutoTokenizer.from_pretrained(tiny_model(arch))
    if request.param == "qwen3-style-template":
        tok.chat_template = QWEN3_STYLE
    return tok


def test_only_assistant_tokens_carry_loss(tokenizer):
    ids, labels = ChatEncoder(tokenizer).encode(CONVO)
    trained = tokenizer.decode([i for i, lab in zip(ids, labels, strict=True) if lab != -100])
    ignored = tokenizer.decode([i for i, lab in zip(ids, labels, strict=True) if lab == -100])
    # Both answers are trained, with the turn's end marker so the model learns to stop.
    assert "I am Leviathan, the Abyssal Mind." in trained and "7 times 6 is 42." in trained
    end = "<|eot_id|>" if "eot_id" in tokenizer.chat_template else "<|im_end|>"
    assert trained.count(end) == 2
    # No user or system text, and no role header, carries loss.
    for text in ("You are Leviathan.", "Who are you?", "What is 7 times 6?", "user", "system"):
        assert text not in trained
        assert text in ignored
    # A Qwen3-style template's own empty <think></think> before the final reply is what the model
    # writes after the generation prompt (TRL's Qwen3 training template marks it so): trained.
    assert "think" not in ignored


def test_labels_equal_ids_where_trained(tokenizer):
    ids, labels = ChatEncoder(tokenizer).encode(CONVO)
    assert len(ids) == len(labels)
    assert all(lab in (-100, i) for i, lab in zip(ids, labels, strict=True))


def test_train_on_inputs_trains_every_turn(tokenizer):
    # Axolotl's meaning: every turn's text and end marker carries loss, the template's headers do not.
    ids, labels = ChatEncoder(tokenizer).encode(CONVO, True)
    trained = tokenizer.decode([i for i, lab in zip(ids, labels, strict=True) if lab != -100])
    for m in CONVO:
        assert m["content"] in trained
    assert "<|im_start|>" not in trained and "<|start_header_id|>" not in trained


def test_sharegpt_and_alpaca_rows():
    turns, cat = parse_row(
        {
            "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}],
            "_category": "general",
        },
        "sharegpt",
    )
    assert turns == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert cat == "general"
    turns, cat = parse_row({"instruction": "Add", "input": "1 and 2", "output": "3"}, "alpaca")
    assert turns[0]["content"] == "Add\n\n1 and 2" and turns[1]["content"] == "3" and cat == "(none)"


@pytest.mark.parametrize(
    "row,reason",
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "no assistant turn"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "unknown role"),
        ({"messages": [{"content": "x"}]}, "no role"),
        (
            {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "y"}]},
            "empty content",
        ),
        ({"messages": []}, "no `messages` list"),
        (["not", "an", "object"], "not a JSON object"),
    ],
)
def test_bad_rows_explained(row, reason):
    with pytest.raises(BadRow, match=reason):
        parse_row(row, "chat_template")


def test_reader_reports_file_and_line(tmp_path):
    good = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    path = write_jsonl(
        tmp_path / "d.jsonl", [good, "{not json", good, {"messages": [{"role": "user", "content": "q"}]}]
    )
    items = list(read_rows(str(path), "chat_template"))
    bad = [i for i in items if isinstance(i, tuple)]
    assert [(b[1], b[2].split(" (")[0]) for b in bad] == [(2, "bad JSON"), (4, "no assistant turn")]


@pytest.mark.slow
def test_check_cli_lists_bad_rows_and_exits_2(tmp_path, tiny_model, write_config):
    good = {
        "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
        "_category": "x",
    }
    rows = [good] * 3 + ["{oops"] + [{"messages": [{"role": "bot", "content": "z"}]}] * 25
    data = write_jsonl(tmp_path / "bad.jsonl", rows)
    cfg = write_config(tiny_model("qwen3"), data=str(data))
    r = cli_here("check", cfg)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{data}:4: bad JSON" in r.stderr
    assert f"{data}:5: messages[0] has unknown role 'bot'" in r.stderr
    assert "26 bad row(s) out of 29" in r.stderr and "and 6 more" in r.stderr
    # train refuses the same data with the same message, before touching the model
    r = cli_here("train", cfg, "--headless")
    assert r.returncode == 2 and "26 bad row(s)" in r.stderr


def test_check_cli_prints_category_mix(tiny_model, write_config):
    r = cli_here("check", write_config(tiny_model("qwen3")))
    assert r.returncode == 0, r.stderr
    assert "identity" in r.stdout and "esoteric" in r.stdout and "tokens per row" in r.stdout
