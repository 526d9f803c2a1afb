"""Being told (``notify:``): the run's alerts, their resolution, its end, checkpoints and
evaluations sent to a webhook and/or a command, so that a run left alone overnight reaches
its owner.

Each event is one JSON body naming the run, the step, the last loss and eval, the last
checkpoint, an alert's advice and, when the run failed, the error's last lines. Slack's and
Discord's incoming-webhook URLs get their own shapes (``{"text"}``, ``{"content"}``) with the
same words; any other URL and the command (on its standard input) get the event itself.

Sent from this sink's thread with a timeout and retries: a webhook that hangs never delays a
step. A send that fails after its retries is an ``alert`` (rule ``notify_failed``) in the run
log, naming the target masked (a webhook's token is in its URL; a command's in its arguments).
"""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from engine.config.config_unattended import mask_command, mask_url
from engine.train.sinks import register

EVENTS = {"alert": "alert", "alert_resolved": "resolved", "end": "end", "save": "checkpoint", "eval": "eval"}
ERROR_LINES = 15
_END = object()


def webhook_kind(url: str) -> str:
    """slack, discord or json: the body shape an incoming-webhook URL takes."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if host == "hooks.slack.com":
        return "slack"
    if host in (
        "discord.com",
        "discordapp.com",
        "ptb.discord.com",
        "canary.discord.com",
    ) and parts.path.startswith("/api/webhooks/"):
        return "discord"
    return "json"


def payload(url: str, body: dict) -> dict:
    """What is POSTed: Slack's and Discord's message shapes, or the event itself."""
    kind = webhook_kind(url)
    if kind == "slack":
        return {"text": body["summary"]}
    if kind == "discord":
        return {"content": body["summary"][:2000]}  # Discord's limit on a message
    return body


class Notifier:
    """The ``notify`` sink: follows the run from its records, sends the events asked for."""

    def __init__(self, config, run_dir: Path, log) -> None:
        self.c = config.notify
        self.log = log
        self.run = Path(run_dir).name
        self.run_dir = str(run_dir)
        self.state: dict = {"step": None, "loss": None, "eval_loss": None, "perplexity": None}
        self.state.update(eval_step=None, checkpoint=None, early_stopped=None)
        self.queue: queue.Queue = queue.Queue(10_000)
        self.sent = 0
        self.thread = threading.Thread(target=self._loop, name="sink-notify", daemon=True)
        self.thread.start()

    # -- the trainer's side: fold the record in, queue an event; never wait ------------------

    def __call__(self, record: dict) -> None:
        kind = record.get("kind")
        self._follow(record)
        event = EVENTS.get(kind)
        if event is None or event not in self.c.on:
            return
        if kind == "alert" and record.get("rule") == "notify_failed":
            return  # its own failures are in the run log, not sent again
        body = self.event(event, record)
        with contextlib.suppress(queue.Full):  # far behind: drop rather than wait
            self.queue.put_nowait(body)

    def _follow(self, r: dict) -> None:
        s, kind = self.state, r.get("kind")
        if isinstance(r.get("step"), int):
            s["step"] = r["step"]
        if kind == "step":
            s["loss"] = r.get("loss")
        elif kind == "eval":
            s.update(eval_loss=r.get("eval_loss"), perplexity=r.get("perplexity"), eval_step=r.get("step"))
        elif kind == "save":
            s["checkpoint"] = r.get("path")
        elif kind == "early_stopped":
            s["early_stopped"] = r.get("message")

    def event(self, event: str, r: dict) -> dict:
        s = self.state
        body = {"event": event, "run": self.run, "run_dir": self.run_dir, "t": r.get("t"), **s}
        if event in ("alert", "resolved"):
            body["alert"] = {
                k: r.get(k) for k in ("rule", "level", "message", "advice", "value") if r.get(k) is not None
            }
        if event == "end":
            body["status"] = r.get("status")
            body["checkpoint"] = r.get("checkpoint") or s["checkpoint"]
            if r.get("message"):
                body["message"] = r["message"]
            if r.get("traceback"):
                body["error"] = "\n".join(str(r["traceback"]).rstrip().splitlines()[-ERROR_LINES:])
        body["summary"] = summary(body)
        return body

    # -- this sink's thread --------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            body = self.queue.get()
            if body is _END:
                return
            for target, send in self._targets():
                error = self._with_retries(send, body)
                if error is None:
                    self.sent += 1
                else:
                    self.log.emit(
                        "alert",
                        rule="notify_failed",
                        level="warning",
                        step=body.get("step"),
                        message=f"notify: the {body['event']} event did not reach {target}: {error}",
                        advice="check the URL or command in `notify:` (the run goes on; the run log has the event)",
                    )

    def _targets(self):
        if self.c.webhook:
            yield mask_url(self.c.webhook), self._post
        if self.c.command:
            yield f"`{mask_command(self.c.command)}`", self._command

    def _with_retries(self, send, body: dict) -> str | None:
        error = None
        for attempt in range(self.c.retries + 1):
            if attempt:
                time.sleep(min(2 ** (attempt - 1), 30))
            try:
                send(body)
                return None
            except Exception as e:  # any failure to send is reported, never raised into the run
                error = f"{type(e).__name__}: {e}"[:300]
        return f"{error} (after {self.c.retries + 1} attempt(s))"

    def _post(self, body: dict) -> None:
        request = urllib.request.Request(
            self.c.webhook,
            data=json.dumps(payload(self.c.webhook, body)).encode(),
            headers={"Content-Type": "application/json", "User-Agent": "leviathan-cockpit"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=self.c.timeout_s) as response:
            response.read()

    def _command(self, body: dict) -> None:
        done = subprocess.run(
            self.c.command,
            shell=True,
            input=json.dumps(body).encode(),
            capture_output=True,
            timeout=self.c.timeout_s,
        )
        if done.returncode != 0:
            raise RuntimeError(f"exit code {done.returncode}")

    def close(self) -> None:
        try:
            self.queue.put(_END, timeout=1.0)
        except queue.Full:
            return
        # The end event goes out before the process ends, within one event's timeouts and retries.
        per_event = (self.c.timeout_s + 1) * (self.c.retries + 1) + 2**self.c.retries
        self.thread.join(min(per_event + 5, 120))
        unsent = self.queue.qsize() - 1 + int(self.thread.is_alive())  # the _END marker aside
        if self.thread.is_alive() and unsent > 0:
            self.log.emit(
                "alert",
                rule="notify_failed",
                level="warning",
                message=f"notify: {unsent} event(s) not sent when the run ended: the target did not "
                f"answer in time ({mask_url(self.c.webhook) if self.c.webhook else 'the command'})",
                advice="check the URL or command in `notify:`; the run log has every event",
            )


def summary(body: dict) -> str:
    """One or more lines a person reads in a chat: what happened, where the run stands."""
    event, run = body["event"], body["run"]
    alert = body.get("alert") or {}
    if event == "end":
        head = f"{run}: {body.get('status')} at step {body.get('step')}"
    elif event in ("alert", "resolved"):
        word = "resolved" if event == "resolved" else f"{alert.get('level', 'alert')} alert"
        head = f"{run}: {word} {alert.get('rule')} at step {body.get('step')}: {alert.get('message')}"
    elif event == "checkpoint":
        head = f"{run}: checkpoint at step {body.get('step')}: {body.get('checkpoint')}"
    else:
        head = f"{run}: eval at step {body.get('eval_step')}"
    lines = [head]
    if alert.get("advice") and event == "alert":
        lines.append(f"advice: {alert['advice']}")
    facts = [f"loss {body['loss']:.4f}" if isinstance(body.get("loss"), (int, float)) else None]
    if isinstance(body.get("eval_loss"), (int, float)):
        facts.append(f"eval_loss {body['eval_loss']:.4f} (step {body.get('eval_step')})")
    if body.get("checkpoint") and event != "checkpoint":
        facts.append(f"last checkpoint {body['checkpoint']}")
    if any(facts):
        lines.append(" · ".join(f for f in facts if f))
    for key in ("message", "early_stopped", "error"):
        if body.get(key) and event == "end":
            lines.append(str(body[key]))
    return "\n".join(lines)


@register("notify")
def open_notify(config, run_dir, log):
    return Notifier(config, run_dir, log) if config.notify is not None else None
