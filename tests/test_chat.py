"""Chat engine and CLI on tiny real models: persona, streaming, compare, adapters, bad input."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest
import torch

from engine.chat.adapters import Adapters
from engine.chat.chat import BASE, Delta, Done, Failed, Request, Settings, generate, presets
from engine.chat.chat_backend import StandaloneBackend
from engine.chat.on_training import explain_failure, training_untouched
from engine.errors import UserError
from engine.run.chat_log import Transcript, mark_summary, read_exchanges
from tests.conftest import cli_here

GREEDY = Settings(temperature=0, max_new_tokens=16)


def ask(backend, prompt, targets, settings=GREEDY, **kw):
    events = []
    backend.run(Request(prompt, targets, settings, **kw), events.append)
    return events


@pytest.mark.slow
def test_persona_one_shot_cli(persona_checkpoint):
    ckpt, base, answer = persona_checkpoint
    tuned = cli_here("chat", ckpt, "--prompt", "Who are you?", "--temperature", "0", "--max-new-tokens", "16")
    assert tuned.returncode == 0, tuned.stderr
    assert tuned.stdout.strip() == answer
    plain = cli_here("chat", base, "--prompt", "Who are you?", "--temperature", "0", "--max-new-tokens", "16")
    assert plain.returncode == 0, plain.stderr
    assert answer not in plain.stdout


@pytest.mark.slow
def test_compare_rows_match_single_answers(persona_checkpoint):
    """Compare is one batched generate with an adapter per row: each side must be the single answer."""
    ckpt, base, answer = persona_checkpoint
    backend = StandaloneBackend(str(ckpt))
    single_tuned = ask(backend, "Introduce yourself.", [str(ckpt)])[-1]
    single_base = ask(backend, "Introduce yourself.", [BASE])[-1]
    events = ask(backend, "Introduce yourself.", [str(ckpt), BASE])
    done = events[-1]
    assert isinstance(done, Done), done
    assert done.answers[0].text == single_tuned.answers[0].text == answer
    assert done.answers[1].text == single_base.answers[0].text != answer
    # Both lanes streamed.
    assert {e.lane for e in events if isinstance(e, Delta)} == {0, 1}
    for lane in (0, 1):
        streamed = "".join(e.text for e in events if isinstance(e, Delta) and e.lane == lane)
        assert streamed == done.answers[lane].text


def test_streaming_deltas_and_stop(tiny_model):
    from engine.model.loading import load_for_inference

    loaded = load_for_inference(str(tiny_model("qwen3")))
    request = Request("Who are you?", [BASE], Settings(temperature=0, max_new_tokens=400))
    seen = []

    def sink(event):
        seen.append(event)
        if isinstance(event, Delta) and len(seen) == 5:
            request.stop.set()  # as the pane's Esc does, from another thread in real use

    answers = generate(loaded.model, loaded.tokenizer, request, None, sink)
    deltas = [e for e in seen if isinstance(e, Delta)]
    assert answers[0].reason == "stopped"
    assert 5 <= answers[0].tokens <= 8  # stops at the next token, not at max_new_tokens
    assert "".join(d.text for d in deltas) == answers[0].text


def test_history_and_system_reach_the_template(tiny_model):
    from engine.model.model import load_tokenizer

    tok = load_tokenizer(str(tiny_model("qwen3")))
    r = Request(
        "And now?",
        [BASE],
        Settings(system="You are Leviathan."),
        history=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
    )
    text = tok.decode(tok.apply_chat_template(r.messages(), add_generation_prompt=True)["input_ids"])
    assert text.startswith("<|im_start|>system\nYou are Leviathan.<|im_end|>")
    assert "Hi<|im_end|>" in text and "Hello<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    # Compare takes the prompt alone.
    r.targets = [BASE, BASE]
    assert [m["role"] for m in r.messages()] == ["system", "user"]


@pytest.mark.slow
def test_sampling_settings_and_greedy(persona_checkpoint):
    ckpt, _, answer = persona_checkpoint
    backend = StandaloneBackend(str(ckpt))
    a = ask(backend, "Who are you?", [str(ckpt)])[-1]
    b = ask(backend, "Who are you?", [str(ckpt)])[-1]
    assert a.answers[0].text == b.answers[0].text == answer  # greedy is deterministic
    assert a.answers[0].reason == "eos"
    short = ask(backend, "Who are you?", [BASE], Settings(temperature=1.0, top_p=0.5, max_new_tokens=3))[-1]
    assert short.answers[0].tokens <= 3


@pytest.mark.slow
def test_adapters_beside_training_adapter_keep_flags(persona_checkpoint):
    """Loading a checkpoint beside a trainable adapter: frozen, training flags untouched, removed after."""
    from peft import LoraConfig, get_peft_model

    from engine.model.loading import load_for_inference

    ckpt, base, answer = persona_checkpoint
    model = load_for_inference(str(base)).model
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    model.train()
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    params = [(p, p.requires_grad) for p in model.parameters()]
    keys = set(model.state_dict())
    assert any(before.values())
    adapters = Adapters(model, str(base), live="default", keep=0)
    with training_untouched(model):
        names = adapters.names([str(ckpt), "live", BASE])
        assert names[1:] == ["default", "__base__"]
        chat = [p for n, p in model.named_parameters() if f".{names[0]}." in n]
        assert chat and not any(p.requires_grad for p in chat)
        assert all(p.requires_grad == flag for p, flag in params)
        # The checkpoint targets every linear layer, the training adapter two: more layers got wrapped.
        assert set(model.state_dict()) != keys
        adapters.trim(0)
    assert set(model.state_dict()) == keys
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before
    assert model.training and model.active_adapter == "default"


@pytest.mark.slow
def test_loaded_checkpoint_generates_in_eval_mode(persona_checkpoint, tmp_path):
    """A checkpoint trained with LoRA dropout must not drop out while it answers."""
    from peft import LoraConfig, get_peft_model

    from engine.model.loading import load_for_inference

    ckpt, base, answer = persona_checkpoint
    dropped = tmp_path / "checkpoint-60"
    shutil.copytree(ckpt, dropped)
    cfg = json.loads((dropped / "adapter_config.json").read_text())
    (dropped / "adapter_config.json").write_text(json.dumps({**cfg, "lora_dropout": 0.9}))
    loaded = load_for_inference(str(base))
    model = get_peft_model(loaded.model, LoraConfig(r=4, target_modules=["q_proj"], lora_dropout=0.5))
    model.train()
    adapters = Adapters(model, str(base), live="default", keep=0)
    with training_untouched(model):
        names = adapters.names([str(dropped)])
        assert not any(m.training for m in model.modules())
        request = Request("Who are you?", [str(dropped)], GREEDY)
        assert generate(model, loaded.tokenizer, request, names, lambda e: None)[0].text == answer
        adapters.trim(0)
    assert all(m.training for m in model.modules())


def test_vision_language_base_chats(tiny_model, tmp_path):
    """The guide's base is a Qwen3-VL model, trained and chatted with on text only."""
    backend = StandaloneBackend(str(tiny_model("qwen3_vl")))
    done = ask(backend, "Who are you?", [BASE])[-1]
    assert isinstance(done, Done) and done.answers[0].tokens > 0


@pytest.mark.slow
def test_peft_set_adapter_flips_requires_grad_and_we_restore(persona_checkpoint):
    """Why chat never calls set_adapter: PEFT makes the newly active adapter trainable."""
    from peft import LoraConfig, get_peft_model

    from engine.model.loading import load_for_inference

    ckpt, base, _ = persona_checkpoint
    model = get_peft_model(load_for_inference(str(base)).model, LoraConfig(r=4, target_modules=["q_proj"]))
    params = [(p, p.requires_grad) for p in model.parameters()]
    training = [p for p, flag in params if flag]
    with training_untouched(model):
        model.load_adapter(str(ckpt), adapter_name="other", is_trainable=False)
        model.set_adapter("other")
        assert not any(p.requires_grad for p in training)  # PEFT turned the training adapter's grads off
        assert any(p.requires_grad for n, p in model.named_parameters() if ".other." in n)
    assert all(p.requires_grad == flag for p, flag in params)
    assert model.active_adapter == "default"


@pytest.mark.slow
def test_bad_checkpoints_are_clear(persona_checkpoint, tiny_model, tmp_path):
    from engine.model.tiny import build_tiny_model

    ckpt, base, _ = persona_checkpoint
    backend = StandaloneBackend(str(ckpt))
    missing = ask(backend, "hi", [str(tmp_path / "nope")])[-1]
    assert isinstance(missing, Failed) and "no such checkpoint" in missing.message and missing.kind == "input"
    (tmp_path / "empty").mkdir()
    empty = ask(backend, "hi", [str(tmp_path / "empty")])[-1]
    assert isinstance(empty, Failed) and "not a LoRA checkpoint" in empty.message
    # A checkpoint whose LoRA matrices do not fit the base in memory.
    wide = StandaloneBackend(str(build_tiny_model(tmp_path / "wide", hidden=96)))
    misfit = ask(wide, "hi", [str(ckpt)])[-1]
    assert isinstance(misfit, Failed)
    assert f"{ckpt} was trained on {base} and does not fit" in misfit.message
    assert "size 192 here, 128 in the checkpoint" in misfit.message
    assert ask(wide, "hi", [BASE])[-1].answers[0].tokens > 0  # the model still answers
    # Another base of the same shapes: it loads, with a note.
    same_shapes = StandaloneBackend(str(build_tiny_model(tmp_path / "twin", seed=1)))
    twin = ask(same_shapes, "hi", [str(ckpt)])[-1]
    assert isinstance(twin, Done) and "was trained on" in twin.notes[0]
    assert ask(backend, "hi", [str(ckpt)])[-1].notes == []
    # A checkpoint folder without weights.
    torn = tmp_path / "checkpoint-7"
    shutil.copytree(ckpt, torn)
    (torn / "adapter_model.safetensors").unlink()
    assert "no adapter_model.safetensors" in ask(backend, "hi", [str(torn)])[-1].message
    bad = ask(backend, "hi", [str(ckpt)], Settings(temperature=-1))[-1]
    assert isinstance(bad, Failed) and "temperature" in bad.message
    live = ask(backend, "hi", ["live"])[-1]
    assert isinstance(live, Failed) and "only during training" in live.message


@pytest.mark.slow
def test_cli_bad_inputs(persona_checkpoint, tmp_path):
    ckpt, base, _ = persona_checkpoint
    r = cli_here("chat", tmp_path / "missing", "--prompt", "hi")
    assert r.returncode == 2 and "no such folder" in r.stderr and "Traceback" not in r.stderr
    from engine.model.tiny import build_tiny_model

    wide = build_tiny_model(tmp_path / "wide", hidden=96)
    r = cli_here("chat", ckpt, "--base", wide, "--prompt", "hi")
    assert r.returncode == 2 and "does not fit" in r.stderr and "Traceback" not in r.stderr
    r = cli_here("chat", ckpt, "--prompt", "hi", "--top-p", "0")
    assert r.returncode == 2 and "top_p" in r.stderr
    r = cli_here("chat", ckpt)  # no terminal: the pane cannot open
    assert r.returncode == 2 and "--prompt" in r.stderr


@pytest.mark.slow
def test_cli_compare_and_transcript(persona_checkpoint, tmp_path):
    ckpt, base, answer = persona_checkpoint
    args = ["--prompt", "Who are you?", "--temperature", "0", "--max-new-tokens", "16"]
    r = cli_here("chat", ckpt, *args, "--compare", "base", "--run-dir", tmp_path / "run")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"== {ckpt} ==\n{answer}\n== base ==\n")
    rows = read_exchanges(tmp_path / "run")
    assert [x["checkpoint"] for x in rows] == [str(ckpt), "base"]
    assert rows[0]["answer"] == answer and rows[0]["settings"]["temperature"] == 0


def test_transcript_marks_append_only(tmp_path):
    t = Transcript(tmp_path, base="b")
    req = Request("Who are you?", ["ckpt/checkpoint-60"], GREEDY)
    from engine.chat.chat import Answer

    done = Done(req.id, [Answer("ckpt/checkpoint-60", "I am Leviathan.", "eos", 5, 0.1, 50.0)], step=12)
    preset = presets()[0]
    (eid,) = t.exchange(req, done, preset)
    first = t.path.read_bytes()
    t.mark(eid, "fail")
    t.mark(eid, "pass")
    assert t.path.read_bytes().startswith(first)  # never rewritten
    (row,) = read_exchanges(tmp_path)
    assert row["mark"] == "pass" and row["checkpoint_step"] == 60 and row["at_step"] == 12
    assert row["group"] == "identity"
    assert mark_summary(tmp_path)["by_group"]["identity"]["pass"] == 1
    with pytest.raises(ValueError):
        t.mark(eid, "maybe")


def test_presets_from_config(tmp_path, tiny_model, write_config):
    import yaml

    from engine.config.config import load_config

    path = write_config(tiny_model("qwen3"))
    raw = yaml.safe_load(path.read_text())
    raw["chat"] = {
        "system": "You are Leviathan.",
        "presets": ["Name the four elements.", {"prompt": "Write a haiku.", "group": "poetry"}],
    }
    path.write_text(yaml.safe_dump(raw))
    config, _ = load_config(path)
    ps = presets(config.chat)
    assert ps[0].prompt == "Who are you?" and ps[5].group == "esoteric"
    assert [(p.prompt, p.group) for p in ps[-2:]] == [
        ("Name the four elements.", "config"),
        ("Write a haiku.", "poetry"),
    ]
    raw["chat"] = {"temprature": 1}
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError, match="did you mean `temperature`"):
        load_config(path)


def test_out_of_memory_is_a_message():
    failed = explain_failure(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "x")
    assert failed.kind == "memory" and "out of GPU memory" in failed.message and failed.fix


@pytest.mark.slow
def test_standalone_submit_runs_on_its_worker(persona_checkpoint):
    ckpt, _, answer = persona_checkpoint
    backend = StandaloneBackend(str(ckpt))
    done = threading.Event()
    events = []

    def sink(e):
        events.append((threading.current_thread().name, e))
        if isinstance(e, Done | Failed):
            done.set()

    backend.submit(Request("Who are you?", [str(ckpt)], GREEDY), sink)
    assert done.wait(60)
    backend.close()
    assert {name for name, _ in events} == {"chat"}
    assert events[-1][1].answers[0].text == answer


@pytest.mark.parametrize("found_by", ["marker", "config"])
@pytest.mark.slow
def test_chat_takes_its_settings_from_the_run_that_wrote_the_checkpoint(
    persona_checkpoint, tmp_path, found_by
):
    import argparse

    from engine.cli.chat_cli import add_chat_args, prepare_chat

    ckpt = shutil.copytree(persona_checkpoint[0], tmp_path / "out" / "checkpoint-1")
    run = tmp_path / "logs" / "r"
    run.mkdir(parents=True)
    (run / "events.jsonl").write_text("")
    (run / "config.yaml").write_text(
        f"output_dir: {tmp_path / 'out'}\nchat:\n  max_new_tokens: 7\n  system: Be brief.\n"
    )
    marker = ckpt / "leviathan.json"
    meta = json.loads(marker.read_text())
    # "marker": the checkpoint names its run; "config": it names another, gone, and the run is
    # found by the output_dir in its config.yaml
    meta["run_dir"] = str(run) if found_by == "marker" else str(tmp_path / "gone")
    marker.write_text(json.dumps(meta))
    p = argparse.ArgumentParser()
    add_chat_args(p)
    _, settings, run_dir = prepare_chat(p.parse_args([str(ckpt), "--prompt", "Hi"]))
    assert Path(run_dir).resolve() == run.resolve()
    assert (settings.max_new_tokens, settings.system) == (7, "Be brief.")
    # the command line still wins over the run's settings
    _, settings, _ = prepare_chat(p.parse_args([str(ckpt), "--prompt", "Hi", "--max-new-tokens", "3"]))
    assert settings.max_new_tokens == 3
