"""The chat pane with Pilot, on real tiny models: streaming, stop, compare, presets, transcripts."""

from __future__ import annotations

import functools
import json
import re
import threading

import pytest
import torch
from textual.widgets import Input, Select, Static

import tests.wait
from cockpit.chat_app import ChatApp
from cockpit.chat_pane import ChatPane
from cockpit.widgets.chat_turn import AnswerView
from engine.chat.chat import BASE, LIVE, Delta, Settings
from engine.chat.chat_backend import StandaloneBackend, TrainingBackend
from engine.run.chat_log import read_exchanges

wait_for = functools.partial(tests.wait.wait_for, timeout=90.0)  # a model answers on CPU
GREEDY = Settings(temperature=0, top_p=0.9, max_new_tokens=16)

pytestmark = pytest.mark.anyio


def collector():
    seen: list = []
    return seen, seen.append


@pytest.fixture
def persona_chat(persona_checkpoint, tmp_path):
    """The chat app on the persona checkpoint, greedy, its chats logged in tmp_path/run:
    (app, the messages it posts, the hook that collects them)."""
    app = ChatApp(StandaloneBackend(str(persona_checkpoint[0]), run_dir=tmp_path / "run"), settings=GREEDY)
    return (app, *collector())


def answered(seen, n=1):
    return lambda: sum(isinstance(m, ChatPane.Answered) for m in seen) >= n


async def ask(pilot, text: str) -> None:
    prompt = pilot.app.query_one("#chat-prompt", Input)
    prompt.focus()
    prompt.value = text
    await pilot.press("enter")


def status(app) -> str:
    return str(app.query_one("#chat-status", Static).render())


@pytest.mark.slow
async def test_stream_history_and_marks(persona_checkpoint, persona_chat, tmp_path):
    ckpt, _, persona = persona_checkpoint
    app, seen, hook = persona_chat
    async with app.run_test(size=(120, 40), message_hook=hook) as pilot:
        await ask(pilot, "Who are you?")
        await wait_for(answered(seen), pilot=pilot)
        deltas = [m.event for m in seen if isinstance(m, ChatPane.ChatEvent) and isinstance(m.event, Delta)]
        assert len(deltas) > 1  # streamed token by token, not in one piece
        (view,) = app.query(AnswerView)
        assert view.text == persona and view.markdown.source == persona
        assert "eos" in status(app)
        await ask(pilot, "And your purpose?")
        await wait_for(answered(seen, 2), pilot=pilot)
        second = [m for m in seen if isinstance(m, ChatPane.Answered)][-1].request
        assert [m["content"] for m in second.history] == ["Who are you?", persona]  # multi-turn
        await pilot.press("ctrl+y")
        await pilot.pause()
        rows = read_exchanges(tmp_path / "run")
        assert [r["mark"] for r in rows] == [None, "pass"]
        assert rows[1]["history"][0]["content"] == "Who are you?"
        first_bytes = (tmp_path / "run/chat").glob("*.jsonl").__next__().read_bytes()
        app.query(AnswerView).first().focus()
        await pilot.press("ctrl+n")  # the focused answer, the first one
        await pilot.pause()
        assert [r["mark"] for r in read_exchanges(tmp_path / "run")] == ["fail", "pass"]
        assert next((tmp_path / "run/chat").glob("*.jsonl")).read_bytes().startswith(first_bytes)
        await pilot.press("ctrl+l")
        await pilot.pause()
        assert not app.query(AnswerView) and app.query_one(ChatPane).history == []


def never_ending_model(src, dst):
    """The tiny model with its stop tokens' output rows zeroed: greedy decoding never ends by itself."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src)
    tok = AutoTokenizer.from_pretrained(src)
    with torch.no_grad():
        for t in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>"):
            model.lm_head.weight[tok.convert_tokens_to_ids(t)] = 0
    model.save_pretrained(dst)
    tok.save_pretrained(dst)
    return dst


async def test_stop_key_ends_generation(tiny_model, tmp_path):
    backend = StandaloneBackend(str(never_ending_model(tiny_model("qwen3"), tmp_path / "model")))
    app = ChatApp(backend, settings=Settings(temperature=0, max_new_tokens=4000))
    seen: list = []
    pressed = threading.Event()

    def hook(message):
        seen.append(message)

    async with app.run_test(size=(120, 40), message_hook=hook) as pilot:
        await ask(pilot, "Who are you?")
        await wait_for(
            lambda: any(isinstance(m, ChatPane.ChatEvent) and isinstance(m.event, Delta) for m in seen),
            pilot=pilot,
        )
        await pilot.press("escape")
        pressed.set()
        await wait_for(answered(seen), pilot=pilot)
        done = [m for m in seen if isinstance(m, ChatPane.Answered)][0].done
        assert done.answers[0].reason == "stopped", done.answers[0]
        assert done.answers[0].tokens < 4000
        assert app.query_one(ChatPane).busy is None
        # The pane takes the next question at once.
        await ask(pilot, "Hi")
        await wait_for(lambda: app.query_one(ChatPane).busy is not None or answered(seen, 2)(), pilot=pilot)
        await pilot.press("escape")
        await wait_for(answered(seen, 2), pilot=pilot)


@pytest.mark.slow
async def test_compare_two_checkpoints_streams_both(persona_checkpoint, persona_chat, tmp_path):
    ckpt, _, persona = persona_checkpoint
    app, seen, hook = persona_chat
    async with app.run_test(size=(140, 40), message_hook=hook) as pilot:
        await pilot.press("ctrl+o")
        await pilot.pause()
        assert app.query_one("#chat-target-b").display
        assert app.query_one("#chat-target", Select).value == str(ckpt)
        app.query_one("#chat-target-b", Select).value = BASE
        await ask(pilot, "Who are you?")
        await wait_for(answered(seen), pilot=pilot)
        lanes = {
            m.event.lane for m in seen if isinstance(m, ChatPane.ChatEvent) and isinstance(m.event, Delta)
        }
        assert lanes == {0, 1}
        views = list(app.query(AnswerView))
        assert [v.target for v in views] == [str(ckpt), BASE]
        assert views[0].text == persona and views[1].text != persona
        rows = read_exchanges(tmp_path / "run")
        assert [r["checkpoint"] for r in rows] == [str(ckpt), BASE]
        assert rows[0]["compare"] == [str(ckpt), BASE] and rows[0]["request"] == rows[1]["request"]


@pytest.mark.slow
async def test_presets_and_bad_settings(persona_checkpoint, persona_chat, tmp_path):
    ckpt, _, persona = persona_checkpoint
    app, seen, hook = persona_chat
    async with app.run_test(size=(120, 40), message_hook=hook) as pilot:
        app.query_one("#chat-temperature", Input).value = "-1"
        await ask(pilot, "Who are you?")
        await pilot.pause()
        assert "temperature -1.0: must be 0" in status(app)
        assert not app.query(AnswerView)
        app.query_one("#chat-temperature", Input).value = "0"
        await pilot.press("f5")  # the second preset, "What is your name?" (F4 is the first)
        await wait_for(answered(seen), pilot=pilot)
        (row,) = read_exchanges(tmp_path / "run")
        assert (
            row["prompt"] == "What is your name?" and row["group"] == "identity" and row["answer"] == persona
        )


@pytest.mark.slow
async def test_pane_during_training_uses_live_weights(tmp_path, tiny_model, write_config):
    """The pane on a TrainingBackend: the answer comes from the training thread at a step boundary."""
    from engine.config.config import load_config
    from engine.run.control import Controls
    from engine.train.train import run

    config, _ = load_config(write_config(tiny_model("qwen3"), max_steps=400, save_steps=2))
    controls = Controls()
    backend = TrainingBackend(
        controls, base=config.base_model, output_dir=config.output_dir, run_dir=tmp_path / "run"
    )
    trainer = threading.Thread(target=run, args=(config,), kwargs={"controls": controls, "resume": "never"})
    app = ChatApp(backend, settings=GREEDY)
    seen, hook = collector()
    try:
        async with app.run_test(size=(120, 40), message_hook=hook) as pilot:
            assert app.query_one("#chat-target", Select).value == LIVE
            trainer.start()
            await ask(pilot, "Who are you?")
            await wait_for(answered(seen), pilot=pilot)
            done = [m for m in seen if isinstance(m, ChatPane.Answered)][0].done
            assert done.step is not None and done.step >= 1
            assert "at step" in status(app)
            # New checkpoints show up in the picker while training goes on.
            await wait_for(lambda: len(backend.targets()) > 2, pilot=pilot)
            app.query_one(ChatPane).refresh_targets()
            options = [t.key for t in app.query_one(ChatPane)._targets]
            assert options[:2] == [LIVE, BASE] and re.search(r"/checkpoint-\d+$", options[2])
            select = app.query_one("#chat-target", Select)
            assert select.value == LIVE and options[2] in [v for _, v in select._options]
    finally:
        controls.request_stop("test over")
        trainer.join(120)
    (row,) = read_exchanges(tmp_path / "run")
    assert row["checkpoint"] == LIVE and row["at_step"] == done.step


@pytest.mark.slow
async def test_another_target_starts_a_new_conversation(persona_checkpoint, persona_chat, tmp_path):
    """The history is one target's: after the checkpoint, the base is asked afresh, the log says
    so, and each answer's header names its target."""
    ckpt, _, persona = persona_checkpoint
    app, seen, hook = persona_chat
    async with app.run_test(size=(120, 40), message_hook=hook) as pilot:
        await ask(pilot, "Who are you?")
        await wait_for(answered(seen), pilot=pilot)
        app.query_one("#chat-target", Select).value = BASE
        await wait_for(lambda: "new conversation with base" in status(app), pilot=pilot)
        await ask(pilot, "Who are you?")
        await wait_for(answered(seen, 2), pilot=pilot)
        second = [m for m in seen if isinstance(m, ChatPane.Answered)][-1].request
        assert second.history == [] and second.targets == [BASE]
        heads = [str(v.query_one(".chat-answer-head", Static).render()) for v in app.query(AnswerView)]
        assert heads[0].startswith(ckpt.name) and heads[1].startswith("base")
        dividers = [str(d.render()) for d in app.query(".chat-divider")]
        assert dividers == ["── new conversation with base ──"]
        # Back to the checkpoint: again a new conversation, not the base's history.
        app.query_one("#chat-target", Select).value = str(ckpt)
        await pilot.pause()
        await ask(pilot, "Who are you?")
        await wait_for(answered(seen, 3), pilot=pilot)
        third = [m for m in seen if isinstance(m, ChatPane.Answered)][-1]
        assert third.request.history == [] and third.done.answers[0].text == persona


async def test_when_training_ends_the_chat_moves_to_its_last_checkpoint(tiny_model, tmp_path):
    """The live weights are gone once the trainer ends: the picker shows the newest checkpoint,
    not the untrained base."""
    from engine.run.control import Controls

    out = tmp_path / "out"
    for step in (5, 10):
        (out / f"checkpoint-{step}").mkdir(parents=True)
        (out / f"checkpoint-{step}" / "leviathan.json").write_text(json.dumps({"step": step}))
    controls = Controls()
    backend = TrainingBackend(
        controls, base=str(tiny_model("qwen3")), output_dir=out, run_dir=tmp_path / "run"
    )
    app = ChatApp(backend, settings=GREEDY)
    async with app.run_test(size=(80, 24)) as pilot:
        select = app.query_one("#chat-target", Select)
        assert select.value == LIVE
        controls.close_jobs()  # what the trainer does when training ends
        app.query_one(ChatPane).refresh_targets()
        await pilot.pause()
        assert select.value == str(out / "checkpoint-10")
