"""Axolotl's keys, templates, dataset options and prompt formats, one behaviour per test."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import yaml
from conftest import base_config, write_jsonl

from engine.config.config import load_config
from engine.errors import UserError

CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def _write(tmp_path: Path, raw: dict) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(raw, sort_keys=False))
    return p


def test_empty_values_mean_not_set(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(
        yaml.safe_dump(base_config("m"))
        + "resume_from_checkpoint:\nspecial_tokens:\nfp16:\nwandb_project:\nlora_model_dir:\ngptq_groupsize:\n"
    )
    config, notes = load_config(p)
    assert config.resume_from_checkpoint is None and config.special_tokens is None and notes == []


def test_empty_adapter_is_full_fine_tuning_and_refused(tmp_path):
    p = tmp_path / "c.yaml"
    raw = base_config("m")
    del raw["adapter"]
    p.write_text(yaml.safe_dump(raw) + "adapter:\n")
    with pytest.raises(UserError, match="full fine-tuning"):
        load_config(p)


def test_every_problem_in_one_report_with_lines(tmp_path):
    raw = base_config("m", learning_rte=1, optimizer="adamw_nope", chat_template="nope", rl="dpo")
    raw["micro_batch_size"] = 0
    p = _write(tmp_path, raw)
    with pytest.raises(UserError) as e:
        load_config(p)
    text = yaml.safe_dump(raw, sort_keys=False).splitlines()
    line = {k: i + 1 for i, ln in enumerate(text) for k in [ln.split(":")[0]] if not ln.startswith(" ")}
    msg = e.value.message
    assert msg.startswith("5 problems")
    for key in ("learning_rte", "optimizer", "chat_template", "rl", "micro_batch_size"):
        assert f"{p}:{line[key]}: " in msg and key in msg
    assert "did you mean `learning_rate`?" in msg and "(top level)" not in msg


def test_cross_key_problem_names_the_key_and_line(tmp_path):
    p = _write(tmp_path, base_config("m", chat_template="jinja"))
    with pytest.raises(UserError) as e:
        load_config(p)
    assert "(top level)" not in e.value.message and "chat_template" in e.value.message
    assert f"{p}:" in e.value.message and "chat_template_jinja" in e.value.fix


def test_did_you_mean_only_for_related_keys(tmp_path):
    p = _write(tmp_path, base_config("m", lora_modle_dir="x", zzz_whatever=1))
    with pytest.raises(UserError) as e:
        load_config(p)
    assert "did you mean `lora_model_dir`?" in e.value.message
    assert "zzz_whatever" in e.value.message and e.value.message.count("did you mean") == 1


def test_mapped_keys_say_what_they_became(tmp_path):
    raw = base_config(
        "m",
        attn_implementation="flash_attention_2",
        plugins=["axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin"],
        liger_rms_norm=True,
        liger_glu_activation=False,
        lora_mlp_kernel=True,
        gradient_checkpointing="offload",
        saves_per_epoch=2,
        evals_per_epoch=4,
    )
    config, notes = load_config(_write(tmp_path, raw))
    assert config.liger_kernels == {"fused_linear_cross_entropy": True, "rms_norm": True, "swiglu": False}
    assert config.gradient_checkpointing == "offload" and config.saves_per_epoch == 2
    text = "\n".join(notes)
    assert "varlen flash" in text and "fused linear cross-entropy" in text and "speed-only" in text


def test_unknown_plugin_refused_with_reason(tmp_path):
    p = _write(tmp_path, base_config("m", plugins=["axolotl.integrations.spectrum.SpectrumPlugin"]))
    with pytest.raises(UserError, match="SpectrumPlugin` has no equivalent"):
        load_config(p)


def test_defaults_that_differ_are_listed_for_omitted_keys(tmp_path):
    raw = base_config("m")
    del raw["sample_packing"], raw["sequence_len"]
    config, _ = load_config(_write(tmp_path, raw))
    said = "\n".join(config._defaults_differ)
    assert "`sample_packing`" in said and "`sequence_len`" in said and "512" in said


def test_per_epoch_intervals_follow_axolotl():
    from engine.train.trainer_args import WHOLE_RUN, per_epoch

    assert per_epoch(None, 4, 2.0, None) == 1 / 8  # a fraction of the run: 8 evals in 2 epochs
    assert per_epoch(None, 1, 1.0, None) == WHOLE_RUN  # once, at the end (1.0 would be every step)
    assert per_epoch(50, 4, 1.0, None) == 50 and per_epoch(None, 0, 1.0, None) is None


def test_optimizer_needs_are_named():
    from engine.config.optimizers import needs

    assert needs("adamw_torch", cuda=False) is None
    msg = needs("adamw_bnb_8bit", cuda=False)
    assert "CUDA" in msg and "adamw_bnb_8bit" in msg
    assert "torchao" in needs("adamw_torch_4bit", cuda=False)


# -- chat templates ----------------------------------------------------------------------------


def test_axolotl_template_names_render_as_axolotl_does(tiny_model):
    from engine.config import chat_templates
    from engine.model.model import load_tokenizer

    root = Path(__file__).parent.parent / "engine" / "config" / "chat_templates"
    for name in (
        "chatml",
        "llama3",
        "qwen3",
        "qwen_25",
        "gemma3",
        "phi_3",
        "mistral_v7_tekken",
        "deepseek_v3",
    ):
        tok = load_tokenizer(str(tiny_model("llama")), name)  # a BOS token, as those templates expect
        assert tok.chat_template == (root / f"{name}.jinja").read_text()
        assert "hello" in tok.apply_chat_template(CHAT["messages"], tokenize=False)
    assert "qwen2_vl" in chat_templates.names() and "SOURCES" in {p.name for p in root.iterdir()}


def test_jinja_template_from_a_file(tmp_path, tiny_model):
    from engine.model.model import load_tokenizer

    f = tmp_path / "t.jinja"
    f.write_text("{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}")
    tok = load_tokenizer(str(tiny_model("qwen3")), "jinja", str(f))
    assert tok.apply_chat_template(CHAT["messages"], tokenize=False) == "[user]hi[assistant]hello"


# -- dataset options and formats ---------------------------------------------------------------


def _rows(path, **spec):
    from engine.config.config import DatasetSpec
    from engine.data.data import read_rows

    return list(read_rows(DatasetSpec(path=str(path), **spec)))


def test_property_mappings_roles_and_system_drop(tmp_path):
    row = {
        "conversations": [
            {"from": "system", "value": "be brief"},
            {"from": "human", "value": "hi"},
            {"from": "bot", "value": "hello"},
        ]
    }
    path = write_jsonl(tmp_path / "d.jsonl", [row])
    (got,) = _rows(
        path,
        field_messages="conversations",
        message_property_mappings={"role": "from", "content": "value"},
        roles={"assistant": ["bot"]},
        drop_system_message=True,
    )
    assert got.messages == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    (old,) = _rows(
        path,
        field_messages="conversations",
        message_field_role="from",
        message_field_content="value",
        roles={"assistant": ["bot"]},
    )
    assert old.messages[0] == {"role": "system", "content": "be brief"}


def test_text_parts_joined_and_image_parts_refused_by_line(tmp_path):
    parts = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": "c"},
        ]
    }
    image = {
        "messages": [
            {"role": "user", "content": [{"type": "image", "image": "x.png"}]},
            {"role": "assistant", "content": "c"},
        ]
    }
    good, bad = _rows(write_jsonl(tmp_path / "d.jsonl", [parts, image]))
    assert good.messages[0]["content"] == "ab"
    assert bad[1] == 2 and "text-only training" in bad[2]


def test_split_slices(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
        for i in range(10)
    ]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    assert [r.line for r in _rows(path, split="train[:20%]")] == [1, 2]
    assert [r.line for r in _rows(path, split="train[3:5]")] == [4, 5]
    assert [r.line for r in _rows(path, split="train[-1:]")] == [10]
    with pytest.raises(UserError, match="one split, `train`"):
        _rows(path, split="test")


def test_every_local_format_and_a_folder(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    bad = {"messages": [{"role": "user", "content": "x"}]}
    folder = tmp_path / "data"
    folder.mkdir()
    with gzip.open(folder / "a.jsonl.gz", "wt") as f:
        f.write(json.dumps(CHAT) + "\n" + json.dumps(bad) + "\n")
    (folder / "b.json").write_text(json.dumps([CHAT, bad]))
    pq.write_table(pa.Table.from_pylist([CHAT, bad]), folder / "c.parquet")
    Dataset.from_list([CHAT, bad]).save_to_disk(tmp_path / "arrow")
    arrow = next((tmp_path / "arrow").glob("*.arrow"))
    (folder / "d.arrow").write_bytes(arrow.read_bytes())
    got = _rows(folder)
    bad_at = [(Path(x[0]).name, x[1]) for x in got if isinstance(x, tuple)]
    assert bad_at == [("a.jsonl.gz", 2), ("b.json", 2), ("c.parquet", 2), ("d.arrow", 2)]
    assert sum(1 for x in got if not isinstance(x, tuple)) == 4
    only = _rows(folder, data_files=["c.parquet"])
    assert {Path(x.file if not isinstance(x, tuple) else x[0]).name for x in only} == {"c.parquet"}


def test_hub_id_not_in_cache_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(UserError) as e:
        _rows("nobody-here/no-such-dataset")
    assert "local Hugging Face cache" in e.value.message and "huggingface-cli download" in e.value.fix


# -- prompt formats ----------------------------------------------------------------------------


def test_alpaca_is_axolotls_prompt_with_loss_on_the_response(tiny_model):
    from engine.data.data import Options, make_row
    from engine.data.prompt_formats import RowEncoder
    from engine.model.model import load_tokenizer

    tok = load_tokenizer(str(tiny_model("llama")))
    row = make_row(
        "d.jsonl", 1, {"instruction": "Add", "input": "1 and 2", "output": "3"}, Options.of("alpaca")
    )
    enc = RowEncoder(tok).encode_row(row, False)
    ids, labels = enc.input_ids, enc.labels
    prompt = (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nAdd\n\n### Input:\n1 and 2\n\n### Response:\n"
    )
    want_prompt = tok(prompt)["input_ids"]
    want_response = tok("3")["input_ids"] + [tok.eos_token_id]
    assert ids == want_prompt + want_response
    assert labels == [-100] * len(want_prompt) + want_response


def test_completion_trains_on_all_of_the_text(tiny_model):
    from engine.data.data import Options, make_row
    from engine.data.prompt_formats import RowEncoder
    from engine.model.model import load_tokenizer

    tok = load_tokenizer(str(tiny_model("qwen3")))
    row = make_row("d.jsonl", 1, {"text": "once upon a time"}, Options.of("completion"))
    enc = RowEncoder(tok).encode_row(row, False)
    ids, labels = enc.input_ids, enc.labels
    assert ids == labels == tok("once upon a time")["input_ids"] + [tok.eos_token_id]


def test_hub_dataset_downloaded_as_files_is_read_offline(tmp_path, monkeypatch):
    """The layout `huggingface-cli download --repo-type dataset` leaves in the hub cache."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    repo = tmp_path / "hf" / "hub" / "datasets--someone--tiny-chat"
    rev = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    data = repo / "snapshots" / rev / "data"
    data.mkdir(parents=True)
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
        for i in range(5)
    ]
    write_jsonl(data / "train-00000.jsonl", rows)
    write_jsonl(data / "test-00000.jsonl", rows[:1])
    got = _rows("someone/tiny-chat", split="train[:40%]")
    assert [r.messages[0]["content"] for r in got] == ["q0", "q1"]
    assert [r.line for r in _rows("someone/tiny-chat", split="test")] == [1]
