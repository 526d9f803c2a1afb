"""Tool calling and reasoning rows end to end, as Axolotl takes them: read from a JSONL file
through the real reader and dataset spec, encoded with real vendored templates (tests/templates)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from engine.config.config_datasets import DatasetSpec
from engine.data.data import read_rows
from engine.data.masks import MaskOptions
from engine.data.prompt_formats import RowEncoder
from tests.mask_props import TOOLS, spans_text, tool_call
from tests.template_zoo import build_zoo

CALL = {"role": "assistant", "content": None, "tool_calls": [tool_call("Paris")]}
RESULT = {"role": "tool", "content": "sunny, 21 C", "tool_call_id": "abcDEF123", "name": "get_weather"}
ROW = {
    "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        CALL,
        RESULT,
        {"role": "assistant", "content": "It is sunny.", "tool_calls": None},
    ],
    "tools": TOOLS,
}


def rows(tmp_path, objs, **spec):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(o) + "\n" for o in objs), encoding="utf-8")
    ds = DatasetSpec(path=str(path), **spec)
    return [r for r in read_rows(ds)], ds


def trained(name, row, ds, config=None):
    tok = build_zoo(name)
    enc = RowEncoder(tok).encode_row(row, MaskOptions.of(ds, config))
    return tok, enc, spans_text(tok, enc)


def test_a_tool_calling_row_trains_the_call_and_the_answer_not_the_result(tmp_path):
    (row,), ds = rows(tmp_path, [ROW])
    assert row.tools == TOOLS
    tok, enc, spans = trained("qwen2_5", row, ds)
    # the call as the model writes it, then its end; the answer; never the result or a header
    assert spans == [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>',
        "It is sunny.<|im_end|>",
    ]
    text = tok.decode(list(enc.ids))
    assert '"name": "get_weather"' in text.split("<|im_end|>")[0]  # the tools reached the system prompt


def test_roles_to_train_can_train_tool_results(tmp_path):
    (row,), ds = rows(tmp_path, [ROW], roles_to_train=["assistant", "tool"])
    spans = trained("qwen2_5", row, ds)[2]
    assert any("sunny, 21 C" in s for s in spans)


def test_field_tools_and_tools_stored_as_a_json_string(tmp_path):
    obj = {"messages": ROW["messages"], "functions": json.dumps(TOOLS)}
    (row,), ds = rows(tmp_path, [obj], field_tools="functions")
    assert row.tools == TOOLS
    bad, _ = rows(tmp_path, [{**obj, "functions": "{not json"}], field_tools="functions")
    assert bad[0][2] == "`functions` is a string but not JSON"


def test_the_roles_mapping_names_the_tool_role(tmp_path):
    msgs = [{**m, "role": {"tool": "function_response"}.get(m["role"], m["role"])} for m in ROW["messages"]]
    (row,), _ = rows(tmp_path, [{**ROW, "messages": msgs}], roles={"tool": ["function_response"]})
    assert [t["role"] for t in row.messages] == ["user", "assistant", "tool", "assistant"]


@pytest.mark.parametrize("how", ["field_thinking", "mapping"])
def test_reasoning_under_the_data_sets_own_key(tmp_path, how):
    obj = {
        "messages": [
            {"role": "user", "content": "Q?"},
            {"role": "assistant", "content": "A.", "thought": "Hm."},
        ]
    }
    spec = (
        {"field_thinking": "thought"}
        if how == "field_thinking"
        else {
            "message_property_mappings": {
                "role": "role",
                "content": "content",
                "reasoning_content": "thought",
            }
        }
    )
    (row,), ds = rows(tmp_path, [obj], **spec)
    assert row.messages[1]["reasoning_content"] == "Hm."
    assert trained("qwen3_0_6b", row, ds)[2] == ["<think>\nHm.\n</think>\n\nA.<|im_end|>"]


def test_harmony_reasoning_is_trained_from_the_channel_tag(tmp_path):
    obj = {
        "messages": [
            {"role": "user", "content": "Q?"},
            {"role": "assistant", "content": "A.", "thinking": "Hm."},
        ]
    }
    (row,), ds = rows(tmp_path, [obj])
    spans = trained("gpt_oss", row, ds)[2]
    assert spans == [
        "<|channel|>analysis<|message|>Hm.<|end|><|start|>assistant<|channel|>final<|message|>A.<|return|>"
    ]


class Cfg:
    eot_tokens = ["<|end|>"]


def test_eot_tokens_end_harmonys_non_final_turns(tmp_path):
    msgs = [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}] * 2
    (row,), ds = rows(tmp_path, [{"messages": msgs}])
    _, enc, spans = trained("gpt_oss", row, ds)
    assert spans[0] == "<|channel|>final<|message|>A."  # nothing the model stops on follows it
    assert any("no stop token" in n for n in enc.notes)
    _, enc, spans = trained("gpt_oss", row, ds, Cfg())
    assert spans[0] == "<|channel|>final<|message|>A.<|end|>"
    assert not any("no stop token" in n for n in enc.notes)


def test_chat_template_kwargs_reach_the_template(tmp_path):
    msgs = [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]
    (row,), ds = rows(tmp_path, [{"messages": msgs}])
    assert trained("qwen3_0_6b", row, ds)[2] == ["<think>\n\n</think>\n\nA.<|im_end|>"]
    (row,), ds = rows(tmp_path, [{"messages": msgs}], chat_template_kwargs={"enable_thinking": False})
    # the empty block is now part of the generation prompt: the model does not write it
    assert trained("qwen3_0_6b", row, ds)[2] == ["A.<|im_end|>"]


def test_no_stop_token_after_a_reply_is_a_note_not_silence(tmp_path):
    msgs = [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}] * 2
    (row,), ds = rows(tmp_path, [{"messages": msgs}])
    _, enc, spans = trained("solar_instruct", row, ds)
    assert spans == ["A.", "A."]
    assert any("no stop token" in n and "eot_tokens" in n for n in enc.notes)


def test_reasoning_fills_the_templates_own_empty_block_never_a_second_one(tmp_path):
    obj = {
        "messages": [
            {"role": "user", "content": "Q?"},
            {"role": "assistant", "content": "A.", "reasoning_content": "Hm."},
        ]
    }
    (row,), ds = rows(tmp_path, [obj])
    tok, enc, spans = trained("deepseek_v3_1", row, ds)  # it writes `<think></think>` before the reply
    text = tok.decode(list(enc.ids))
    assert text.count("<think>") == text.count("</think>") == 1
    # its generation prompt ends with `<think>`: the model writes from the reasoning on
    assert spans == ["\nHm.\n</think>A.<｜end▁of▁sentence｜>"]


def test_a_lone_closing_tag_before_the_reply_keeps_the_reasoning_out():
    from engine.data.masks import _own_block

    text = "<｜Assistant｜></think>A."
    assert _own_block(text, text.index("A.")) == "closed"  # no `</think><think>...</think>` made
    text = "<|im_start|>assistant\n<think>\n\n</think>\n\nA."
    i, j = _own_block(text, text.index("A."))
    assert text[:i].endswith("<think>") and text[j:].startswith("</think>")


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("revision", "v2", "locally cached snapshot"),
        ("trust_remote_code", True, "never by running a loading script"),
        ("message_field_training_detail", "train_detail", "per-character training offsets"),
        ("chat_template", "chatml", "one template"),
    ],
)
def test_dataset_keys_refused_with_the_reason(key, value, reason):
    with pytest.raises(ValidationError, match=reason):
        DatasetSpec(path="x.jsonl", **{key: value})
    DatasetSpec(
        path="x.jsonl", **{key: {"trust_remote_code": False, "chat_template": "tokenizer_default"}.get(key)}
    )


DOLLY = {
    "instruction": "When did Virgin Australia start operating?",
    "context": "Virgin Australia commenced services on 31 August 2000.",
    "response": "On 31 August 2000.",
    "category": "closed_qa",
}
METAMATH = {
    "query": "What is 7 times 6?",
    "response": "7 * 6 = 42. The answer is: 42",
    "type": "GSM_Rephrased",
}


@pytest.mark.parametrize(
    ("obj", "mapping", "prompt"),
    [
        (
            DOLLY,
            {
                "field_instruction": "instruction",
                "field_input": "context",
                "field_output": "response",
                "format": "[INST] {instruction}\n{input} [/INST]",
                "no_input_format": "[INST] {instruction} [/INST]",
            },
            f"[INST] {DOLLY['instruction']}\n{DOLLY['context']} [/INST]",
        ),
        (
            METAMATH,
            {
                "field_instruction": "query",
                "field_output": "response",
                "system_prompt": "Solve it.",
                "system_format": "<<{system}>>\n",
                "format": "Q: {instruction}\nA: ",
            },
            f"<<Solve it.>>\nQ: {METAMATH['query']}\nA: ",
        ),
    ],
)
def test_custom_type_mappings_as_axolotl_builds_them(tmp_path, obj, mapping, prompt):
    (row,), ds = rows(tmp_path, [obj], type=mapping)
    assert ds.type == "custom" and row.fmt == "custom"
    tok = build_zoo("llama2")
    enc = RowEncoder(tok).encode_row(row, MaskOptions.of(ds))
    output = obj["response"]
    # Axolotl's strategy: the prompt and the response tokenized apart, EOS after the response
    want_prompt = tok(prompt)["input_ids"]
    want_response = [i for i in tok(output)["input_ids"] if i != tok.bos_token_id] + [tok.eos_token_id]
    assert enc.input_ids == want_prompt + want_response
    assert enc.labels == [-100] * len(want_prompt) + want_response


def test_custom_type_mapping_mistakes_are_named():
    with pytest.raises(ValidationError, match="may use only"):
        DatasetSpec(path="x.jsonl", type={"field_instruction": "q", "format": "{question}"})
    with pytest.raises(ValidationError, match="format"):
        DatasetSpec(path="x.jsonl", type={"field_instruction": "q"})
    with pytest.raises(ValidationError, match="needs the mapping"):
        DatasetSpec(path="x.jsonl", type="custom")


def translated(raw):
    from engine.config.axolotl_keys import translate
    from engine.config.config import RunConfig

    return translate(raw, set(RunConfig.model_fields))


def test_top_level_chat_template_kwargs_reach_every_dataset():
    t = translated({"chat_template_kwargs": {"enable_thinking": False}, "datasets": [{"path": "a.jsonl"}]})
    assert t.data["datasets"][0]["chat_template_kwargs"] == {"enable_thinking": False}
    assert not t.problems


def test_unfrozen_parameters_that_keep_the_vision_tower_frozen_are_a_note():
    # Axolotl's examples/gemma3/gemma-3-4b-qlora.yml ("Freeze vision tower")
    gemma = [r"^model\.language_model\..*", r"^lm_head\..*"]
    t = translated({"adapter": "qlora", "unfrozen_parameters": gemma})
    assert not t.problems and any("changes nothing here" in n for _, n in t.notes)
    t = translated({"adapter": "lora", "unfrozen_parameters": [r"^model\.vision_tower\..*"]})
    assert "vision tower" in t.problems[0][1]
    t = translated({"unfrozen_parameters": gemma})  # no adapter: full fine-tuning of those weights
    assert "full fine-tuning" in t.problems[0][1]


def test_a_vl_data_set_whose_every_row_has_an_image_says_why_nothing_trains(tmp_path, tiny_model):
    from engine.config.config import validate
    from engine.data import prepare
    from engine.errors import UserError
    from engine.model.model import load_tokenizer
    from tests.conftest import base_config

    model = tiny_model("qwen3")
    image = {"type": "image", "url": "cat.png"}
    row = {
        "messages": [
            {"role": "user", "content": [image, {"type": "text", "text": "What is it?"}]},
            {"role": "assistant", "content": "A cat."},
        ]
    }
    data = tmp_path / "vl.jsonl"
    data.write_text((json.dumps(row) + "\n") * 3)
    raw = base_config(model, data, output_dir=str(tmp_path / "out"), skip_bad_rows=True)
    config = validate(raw, tmp_path / "c.yaml")[0]
    with pytest.raises(UserError) as e:
        prepare.prepare(config, load_tokenizer(str(model)), tmp_path / "prep", workers=1)
    assert "all 3 row(s) were skipped" in str(e.value) and "part 0 is image: text-only training" in str(
        e.value
    )


def test_a_streamed_answer_keeps_tool_call_markers_and_hides_other_special_tokens():
    from engine.chat.chat import _Lane

    tok = build_zoo("qwen2_5")
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    ids = tok(call + "<|im_start|>")["input_ids"]
    lane = _Lane(tok, stop_ids={tok.convert_tokens_to_ids("<|im_end|>")})
    shown = "".join(lane.push(i) for i in ids) + lane.flush()
    assert shown == call  # the call with its markers; the chat-format token hidden


def test_a_content_part_with_train_false_is_refused_not_ignored(tmp_path):
    parts = [{"type": "text", "text": "Sure. "}, {"type": "text", "text": "secret", "train": False}]
    obj = {"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": parts}]}
    (bad,), _ = rows(tmp_path, [obj])
    assert "messages[1] part 1 has `train: false`" in bad[2]
