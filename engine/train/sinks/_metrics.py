"""Run-log records as a tracker's scalars and texts: the same names in W&B, TensorBoard and
MLflow, so a dashboard holds what the cockpit shows (loss, learning rate, grad norm, tokens/s,
MFU, GPU memory, eval loss and perplexity, probe scores per checkpoint, alerts, the end)."""

from __future__ import annotations

import math

STEP = {
    "loss": "train/loss",
    "lr": "train/learning_rate",
    "grad_norm": "train/grad_norm",
    "epoch": "train/epoch",
    "tokens": "train/tokens",
    "tokens_per_s": "perf/tokens_per_s",
    "mfu": "perf/mfu",
    "s_per_step": "perf/s_per_step",
}
EVAL = {"eval_loss": "eval/loss", "perplexity": "eval/perplexity"}
GPU = {
    "used_mb": "gpu/used_mb",
    "total_mb": "gpu/total_mb",
    "util": "gpu/util",
    "torch_peak_mb": "gpu/torch_peak_mb",
}
TEXT_KINDS = ("alert", "alert_resolved", "early_stopped", "end", "note")


def _finite(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def scalars(record: dict) -> dict[str, float]:
    """The record's numbers under the trackers' names (empty for records without any)."""
    kind = record.get("kind")
    names = {"step": STEP, "eval": EVAL, "gpu": GPU}.get(kind)
    out = {}
    if names:
        for field, name in names.items():
            v = _finite(record.get(field))
            if v is not None:
                out[name] = v
    elif kind == "probe" and record.get("suite") and _finite(record.get("score")) is not None:
        out[f"probe/{record['suite']}"] = float(record["score"])
    elif kind in ("alert", "alert_resolved"):
        out[f"alerts/{record.get('rule', 'alert')}"] = 1.0 if kind == "alert" else 0.0
    return out


def text(record: dict) -> tuple[str, str] | None:
    """(tag, text) for a record worth reading on a dashboard: alerts and their resolution,
    early stopping, notes, the end."""
    kind = record.get("kind")
    if kind not in TEXT_KINDS:
        return None
    if kind == "end":
        body = f"{record.get('status')} at step {record.get('step')}"
        if record.get("message"):
            body += f": {record['message']}"
        return "run/end", body
    if kind in ("alert", "alert_resolved"):
        word = "resolved" if kind == "alert_resolved" else record.get("level", "alert")
        body = f"[{word}] {record.get('rule', '')}: {record.get('message', '')}"
        if record.get("advice"):
            body += f" (advice: {record['advice']})"
        return "alerts", body
    return ("run/early_stopped" if kind == "early_stopped" else "notes"), str(record.get("message", ""))


def step_of(record: dict) -> int | None:
    step = record.get("step")
    return step if isinstance(step, int) else None


def flat(d: dict, prefix: str = "") -> dict[str, str]:
    """A nested config as ``a.b.c -> text`` pairs (MLflow params; TensorBoard's config text)."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat(v, key + "."))
        elif v is not None:
            out[key] = str(v)
    return out
