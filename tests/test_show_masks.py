"""`check --show-masks N [--json]`, and what `check` says about what a template did to rows."""

from __future__ import annotations

import json

import pytest

from tests.chat_tokenizers import TEMPLATES
from tests.conftest import DEMO_DATA, cli_here, write_jsonl


def chat(system: str | None, *pairs: str) -> dict:
    msgs = [{"role": "system", "content": system}] if system else []
    for q, a in zip(pairs[::2], pairs[1::2], strict=True):
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return {"messages": msgs, "_category": "x"}


def test_json_is_one_object_a_line_with_the_trained_spans(tiny_model, write_config):
    r = cli_here("check", write_config(tiny_model("qwen3")), "--show-masks", "3", "--json")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    rows = [json.loads(x) for x in DEMO_DATA.read_text().splitlines()[:3]]
    assert len(lines) == 3
    for n, (line, row) in enumerate(zip(lines, rows, strict=True), 1):
        obj = json.loads(line)
        assert set(obj) == {"file", "line", "text", "trained"}
        assert obj["file"] == str(DEMO_DATA) and obj["line"] == n
        # The tiny Qwen3 model carries ChatML: each reply is trained with its <|im_end|>.
        replies = [m["content"] + "<|im_end|>" for m in row["messages"] if m["role"] == "assistant"]
        assert obj["trained"] == replies
        for m in row["messages"]:
            assert f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>" in obj["text"]


def test_text_mode_brackets_trained_tokens_and_reports_template_notes(tmp_path, tiny_model, write_config):
    data = write_jsonl(
        tmp_path / "m.jsonl",
        [chat("Be brief.", "Capital of France?", "Paris."), chat(None, "Hi", "a"), chat("Sys", "Q", "S")],
    )
    mistral = (TEMPLATES / "mistral_v3.jinja").read_text()
    cfg = write_config(
        tiny_model("qwen3"), data=str(data), chat_template="jinja", chat_template_jinja=mistral
    )
    r = cli_here("check", cfg, "--show-masks", "2")
    assert r.returncode == 0, r.stderr
    eos = "<|im_end|>"  # the template writes the tokenizer's eos_token after each reply
    assert f"[INST] Capital of France?[/INST][[ Paris.{eos}]]" in r.stdout
    assert f"[INST] Hi[/INST][[ a{eos}]]" in r.stdout
    assert "Be brief." not in r.stdout  # Mistral v0.3 drops the system prompt unless a user turn is last
    assert f"1 row(s): the template leaves out the system turn ({data}:1)" in r.stderr
    # Plain `check` counts it over the whole file, with the rows' file:line.
    r = cli_here("check", cfg)
    assert r.returncode == 0, r.stderr
    assert f"2 row(s): the template leaves out the system turn ({data}:1, {data}:3)" in r.stdout


def test_a_template_that_raises_makes_a_bad_row_with_its_message(tmp_path, tiny_model, write_config):
    data = write_jsonl(tmp_path / "g.jsonl", [chat(None, "Hi", "Hello."), chat("Sys", "Hi", "Hello.")])
    gemma2 = (TEMPLATES / "gemma2.jinja").read_text()
    cfg = write_config(tiny_model("qwen3"), data=str(data), chat_template="jinja", chat_template_jinja=gemma2)
    r = cli_here("check", cfg)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{data}:2: the chat template refused it: TemplateError: System role not supported" in r.stderr
    assert "1 bad row(s) out of 2" in r.stderr


def test_show_masks_needs_the_tokenizer(tiny_model, write_config):
    r = cli_here("check", write_config(tiny_model("qwen3")), "--show-masks", "2", "--no-tokenizer")
    assert r.returncode == 2 and "--show-masks N needs the tokenizer" in r.stderr


@pytest.mark.slow
def test_the_run_log_names_rows_the_template_changed(tmp_path, tiny_model, write_config):
    from engine.config.config import load_config
    from engine.train.train import run

    rows = [chat("Be brief.", "Capital?", "Paris.")] + [chat(None, "Hi", "Hello.")] * 20
    data = write_jsonl(tmp_path / "m.jsonl", rows)
    mistral = (TEMPLATES / "mistral_v3.jinja").read_text()
    cfg = write_config(
        tiny_model("qwen3"), data=str(data), chat_template="jinja", chat_template_jinja=mistral, max_steps=1
    )
    result = run(load_config(cfg)[0])
    assert result.status == "completed"
    recs = [json.loads(x) for x in (result.run_dir / "events.jsonl").read_text().splitlines()]
    note = next(r for r in recs if r["kind"] == "note" and "system turn" in r["message"])
    assert note["message"] == "1 row(s): the template leaves out the system turn"
    assert note["rows"] == [f"{data}:1"]


def test_parallel_check_counts_the_same_notes_and_options(tmp_path, tiny_model, monkeypatch):
    from engine.config.config import validate
    from engine.data import prepare
    from engine.model.model import load_tokenizer
    from tests.conftest import base_config

    rows = [chat("Sys", "Q", "A."), chat(None, "Q", "A."), chat("Sys", "Q1", "A1.", "Q2", "A2.")] * 30
    data = write_jsonl(tmp_path / "m.jsonl", rows)
    mistral = (TEMPLATES / "mistral_v3.jinja").read_text()
    raw = base_config(tiny_model("qwen3"), data, chat_template="jinja", chat_template_jinja=mistral)
    raw["datasets"][0]["train_on_eos"] = "none"
    config, _ = validate(raw, tmp_path / "c.yaml")
    tok = load_tokenizer(str(tiny_model("qwen3")), "jinja", mistral)
    serial = prepare.check(config, tok, workers=1)
    monkeypatch.setattr(prepare, "PARALLEL_MIN", 0)
    parallel = prepare.check(config, tok, workers=2)
    assert serial.notes_count == parallel.notes_count == {"the template leaves out the system turn": 60}
    assert serial.notes == parallel.notes
    assert serial.trained_by_category == parallel.trained_by_category
    # train_on_eos: none reached the workers: one end token fewer per reply (120 replies)
    raw["datasets"][0]["train_on_eos"] = "turn"
    turn = prepare.check(validate(raw, tmp_path / "c.yaml")[0], tok, workers=2)
    assert sum(turn.trained_by_category.values()) - sum(parallel.trained_by_category.values()) == 120
