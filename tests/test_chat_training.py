"""Chat during a real tiny training run leaves training bit-identical to a run without it."""

from __future__ import annotations

import threading

import pytest
import torch
from safetensors.torch import load_file

from engine.chat.chat import BASE, LIVE, Done, Failed, Request, Settings, Started
from engine.chat.chat_backend import TrainingBackend
from engine.config.config import validate
from engine.run.control import Controls
from engine.run.events import read_events
from engine.train.train import run
from tests.conftest import DEMO_DATA, base_config

SAMPLED = Settings(temperature=0.9, top_p=0.95, max_new_tokens=12)  # draws from the RNG
GREEDY = Settings(temperature=0, max_new_tokens=16)


def _train(tmp_path, name, model, chats=None):
    raw = base_config(
        model,
        DEMO_DATA,
        max_steps=8,
        save_steps=4,
        lora_dropout=0.1,  # dropout draws from the RNG between steps too
        output_dir=str(tmp_path / name / "out"),
        logs_dir=str(tmp_path / name / "logs"),
        run_name="r",
    )
    config, _ = validate(raw, tmp_path / "run.yaml")
    controls = Controls()
    listeners = [chats(controls, config)] if chats else []
    result = run(config, controls=controls, listeners=listeners, resume="never")
    assert result.status == "completed"
    return tmp_path / name


@pytest.mark.slow
def test_chat_during_training_is_invisible_to_training(tmp_path, tiny_model, persona_checkpoint):
    from engine.model.tiny import build_tiny_model

    model = tiny_model("qwen3")
    ckpt, _, persona = persona_checkpoint
    wide = build_tiny_model(tmp_path / "wide", hidden=96)
    events: list = []
    resumed = threading.Event()

    def chats(controls, config):
        backend = TrainingBackend(controls, base=config.base_model, output_dir=config.output_dir)

        def sink(e):
            events.append(e)
            if isinstance(e, Done | Failed) and e.id == "paused-chat":
                controls.request_resume()
                resumed.set()

        def listener(record):
            if record["kind"] == "paused":  # chat while paused; the answer resumes training
                backend.submit(Request("Who are you?", [LIVE, str(ckpt)], SAMPLED, id="paused-chat"), sink)
            if record["kind"] != "step":
                return
            if record["step"] == 2:  # these run at the end of step 3
                backend.submit(Request("Who are you?", [LIVE], SAMPLED), sink)
                backend.submit(Request("Who are you?", [str(ckpt), BASE], GREEDY, id="compare"), sink)
                backend.submit(Request("Who are you?", [str(ckpt)], SAMPLED), sink)
                backend.submit(Request("hi", [str(wide / "nope")], SAMPLED, id="missing"), sink)
                stopped = Request("hi", [LIVE], SAMPLED, id="stopped")
                stopped.stop.set()
                backend.submit(stopped, sink)
            if record["step"] == 5:  # pauses at the end of step 6
                controls.request_pause()

        return listener

    plain = _train(tmp_path, "plain", model)
    chatty = _train(tmp_path, "chatty", model, chats)
    assert resumed.is_set()

    # The chats happened, on the training thread, with the right adapters.
    done = {e.id: e for e in events if isinstance(e, Done)}
    failed = {e.id: e for e in events if isinstance(e, Failed)}
    started = [e for e in events if isinstance(e, Started)]
    assert {s.step for s in started} == {3, 6}
    assert done["compare"].answers[0].text == persona  # the checkpoint's adapter, beside the training one
    assert done["compare"].answers[1].text != persona
    assert done["stopped"].answers[0].reason == "stopped" and done["stopped"].answers[0].tokens == 0
    assert "no such checkpoint" in failed["missing"].message
    assert len(done) == 5 and done["paused-chat"].step == 6
    records = read_events(chatty / "logs/r/events.jsonl").records
    assert [(r["step"], r["jobs"]) for r in records if r["kind"] == "chat"] == [(3, 5), (6, 1)]
    assert [r["kind"] for r in records if r["kind"] in ("paused", "resumed")] == ["paused", "resumed"]

    # Training is bit-identical: loss curve, adapter weights, optimizer state, RNG states.
    def steps(root):
        return [
            (r["step"], r["loss"], r.get("grad_norm"))
            for r in read_events(root / "logs/r/events.jsonl").records
            if r["kind"] == "step"
        ]

    assert steps(plain) == steps(chatty) and len(steps(plain)) == 8
    for ck in ("checkpoint-4", "checkpoint-8"):
        a, b = plain / "out" / ck, chatty / "out" / ck
        assert sorted(p.name for p in a.iterdir()) == sorted(
            p.name for p in b.iterdir()
        )  # no chat adapter saved
        wa, wb = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
        oa = torch.load(a / "optimizer.pt", weights_only=False)
        ob = torch.load(b / "optimizer.pt", weights_only=False)
        assert oa["state"].keys() == ob["state"].keys() and oa["param_groups"] == ob["param_groups"]
        for i in oa["state"]:
            assert all(torch.equal(oa["state"][i][k], ob["state"][i][k]) for k in oa["state"][i])
        ra = torch.load(a / "rng_state.pth", weights_only=False)
        rb = torch.load(b / "rng_state.pth", weights_only=False)
        assert torch.equal(ra["cpu"], rb["cpu"]) and ra["python"] == rb["python"]
        assert all(
            (x == y).all() if hasattr(x, "shape") else x == y
            for x, y in zip(ra["numpy"], rb["numpy"], strict=True)
        )


@pytest.mark.slow
def test_after_training_requests_go_to_a_standalone_model(tmp_path, tiny_model, persona_checkpoint):
    ckpt, base, persona = persona_checkpoint
    controls = Controls()
    backend = TrainingBackend(controls, base=str(base), output_dir=ckpt.parent)
    assert [t.key for t in backend.targets()][:2] == [LIVE, BASE]
    waiting = Request("Who are you?", [LIVE], GREEDY)
    events = []
    backend.submit(waiting, events.append)
    controls.close_jobs("training has ended")  # what the callback does at on_train_end
    assert isinstance(events[-1], Failed) and "not answered: training has ended" in events[-1].message
    assert LIVE not in [t.key for t in backend.targets()]
    finished = threading.Event()

    def sink(e):
        events.append(e)
        if isinstance(e, Done | Failed):
            finished.set()

    backend.submit(Request("Who are you?", [str(ckpt)], GREEDY), sink)
    assert finished.wait(60)
    backend.close()
    assert isinstance(events[-1], Done) and events[-1].answers[0].text == persona
