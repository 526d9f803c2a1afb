"""Notifications (``notify:``) received by a local HTTP server on 127.0.0.1: one per event of
the run log, with the run, step, loss, eval and checkpoint; a failed run's error lines; Slack's
and Discord's shapes; a command with the event on stdin; a webhook that hangs or fails is an
alert and the run completes; the webhook's token is never written out."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import run_config

from engine.config.config import validate
from engine.run.events import RunLog, dedupe_steps, read_events
from engine.train.sinks.notify import Notifier, payload, webhook_kind

TOKEN = "T000/B000/SECRET-TOKEN"


class Hook:
    """A webhook on 127.0.0.1: keeps each body; ``hang`` holds every request unanswered."""

    def __init__(self, hang: bool = False, status: int = 200) -> None:
        self.bodies: list[dict] = []
        self.release = threading.Event()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if hang:
                    hook.release.wait(30)
                    return
                hook.bodies.append(json.loads(body))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/{TOKEN}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook():
    h = Hook()
    yield h
    h.close()


def train(model, root: Path, notify: dict, **over):
    from engine.train.train import run

    raw = run_config(model, root, "told", max_steps=6, save_steps=3, val_set_size=16, eval_steps=2, **over)
    raw["notify"] = notify
    config, _ = validate(raw, root / "told.yaml")
    return run(config, resume="never")


@pytest.mark.slow
def test_one_notification_per_event_with_the_runs_facts(tmp_path, tiny_model, hook):
    out = tmp_path / "cmd.jsonl"
    notify = {
        "webhook": hook.url,
        "command": f"cat >> {out}; echo >> {out}",
        "on": ["alert", "resolved", "end", "checkpoint", "eval"],
    }
    result = train(tiny_model(), tmp_path, notify)
    assert result.status == "completed"
    records = read_events(Path(result.run_dir) / "events.jsonl").records
    kinds = {
        "alert": "alert",
        "alert_resolved": "resolved",
        "end": "end",
        "save": "checkpoint",
        "eval": "eval",
    }
    expected = [r for r in records if r["kind"] in kinds and r.get("rule") != "notify_failed"]
    assert {"alert", "save", "eval", "end"} <= {
        r["kind"] for r in expected
    }  # a tiny model's high loss alerts
    assert [b["event"] for b in hook.bodies] == [kinds[r["kind"]] for r in expected]
    steps = dedupe_steps(records)
    for body, r in zip(hook.bodies, expected, strict=True):
        assert body["run"] == "told" and body["step"] == r.get("step", body["step"])
        before = [s for s in steps if s["t"] <= r["t"]]
        assert body["loss"] == (before[-1]["loss"] if before else None)
    end = hook.bodies[-1]
    last_save = [r for r in records if r["kind"] == "save"][-1]
    last_eval = [r for r in records if r["kind"] == "eval"][-1]
    assert end["status"] == "completed" and end["step"] == 6 and end["checkpoint"] == last_save["path"]
    assert end["eval_loss"] == last_eval["eval_loss"] and end["eval_step"] == last_eval["step"]
    alert_body = next(b for b in hook.bodies if b["event"] == "alert")
    alert = next(r for r in records if r["kind"] == "alert")
    assert alert_body["alert"]["advice"] == alert["advice"] and alert["advice"] in alert_body["summary"]
    from_command = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    assert from_command == hook.bodies  # the command got the same events on stdin
    written = (Path(result.run_dir) / "events.jsonl").read_text() + (
        Path(result.run_dir) / "config.yaml"
    ).read_text()
    assert "SECRET-TOKEN" not in written and str(out) not in written  # URL and command masked


@pytest.mark.slow
def test_a_hanging_webhook_is_an_alert_and_the_run_completes(tmp_path, tiny_model):
    hanging = Hook(hang=True)
    try:
        notify = {"webhook": hanging.url, "on": ["eval", "end"], "timeout_s": 1, "retries": 1}
        result = train(tiny_model(), tmp_path, notify)
    finally:
        hanging.close()
    assert result.status == "completed"
    records = read_events(Path(result.run_dir) / "events.jsonl").records
    failed = [r for r in records if r["kind"] == "alert" and r.get("rule") == "notify_failed"]
    assert any("(after 2 attempt(s))" in r["message"] for r in failed)  # each try timed out, retried once
    assert all("127.0.0.1/***" in r["message"] and "SECRET" not in r["message"] for r in failed)


def test_a_failed_run_sends_its_error_lines_and_resolved_alerts(tmp_path, hook):
    raw = run_config("some/model", tmp_path, "x")
    raw["notify"] = {"webhook": hook.url, "on": ["resolved", "end"]}
    config, _ = validate(raw, tmp_path / "x.yaml")
    log = RunLog(tmp_path / "events.jsonl")
    sink = Notifier(config, tmp_path / "logs" / "x", log)
    log.listeners.append(sink)
    log.emit("step", step=7, loss=1.25)
    log.emit("alert_resolved", step=7, rule="perplexity", message="perplexity now 2.1", value=2.1)
    tb = "Traceback (most recent call last):\n" + "".join(f'  File "f{i}.py", line {i}\n' for i in range(30))
    log.emit(
        "end", step=7, status="failed", message="OSError: disk full", traceback=tb + "OSError: disk full"
    )
    sink.close()
    resolved, end = hook.bodies
    assert (
        resolved["event"] == "resolved"
        and resolved["alert"]["rule"] == "perplexity"
        and resolved["step"] == 7
    )
    assert end["status"] == "failed" and end["loss"] == 1.25 and end["message"] == "OSError: disk full"
    lines = end["error"].splitlines()
    assert len(lines) == 15 and lines[-1] == "OSError: disk full" and lines[0] == '  File "f16.py", line 16'


def test_slack_and_discord_urls_get_their_own_shapes():
    slack = "https://hooks.slack.com/services/T000/B000/XXXX"
    discord = "https://discord.com/api/webhooks/123/abc"
    body = {"event": "end", "summary": "told: completed at step 6", "step": 6}
    assert webhook_kind(slack) == "slack" and payload(slack, body) == {"text": body["summary"]}
    assert webhook_kind(discord) == "discord" and payload(discord, body) == {"content": body["summary"]}
    assert webhook_kind("https://example.org/discord.com/api/webhooks/1") == "json"
    assert payload("https://example.org/hook", body) == body


def test_notify_needs_a_target_and_an_http_url(tmp_path):
    from engine.errors import UserError

    for section, words in (
        ({"on": ["end"]}, "neither `webhook:` nor `command:`"),
        ({"webhook": "ftp://x"}, "http"),
    ):
        raw = run_config("some/model", tmp_path, "x")
        raw["notify"] = section
        with pytest.raises(UserError) as e:
            validate(raw, tmp_path / "x.yaml")
        assert words in e.value.message and "notify" in e.value.message
