"""Step losses a damaged run log lost, read back from the newest checkpoint's trainer_state.json.

Transformers' Trainer keeps ``log_history`` (one entry per logging step: ``step``, ``loss``,
``grad_norm``, ``learning_rate``, ``epoch``) in each checkpoint up to its save; when the run
log's seal (engine.run.seal) says records were lost, the steps missing from the log are taken
from there, and a note says how many and from which file.
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.run.checkpoints import latest


def lost_steps(output_dir: Path | None, raw: list[dict]) -> tuple[list[dict], str | None]:
    """Step records (the log's shape) for the steps ``raw`` lacks, and the note saying so."""
    ckpt = latest(output_dir) if output_dir and Path(output_dir).is_dir() else None
    if ckpt is None:
        return [], None
    source = ckpt.path / "trainer_state.json"
    try:
        history = json.loads(source.read_text()).get("log_history", [])
    except (OSError, ValueError, AttributeError):
        return [], None
    have = {r.get("step") for r in raw if r.get("kind") == "step"}
    out = [
        {
            "t": 0.0,
            "kind": "step",
            "step": h["step"],
            "loss": h["loss"],
            "lr": h.get("learning_rate"),
            "grad_norm": h.get("grad_norm"),
            "epoch": h.get("epoch"),
        }
        for h in history
        if isinstance(h, dict) and isinstance(h.get("step"), int) and "loss" in h and h["step"] not in have
    ]
    if not out:
        return [], None
    steps = f"step {out[0]['step']}" if len(out) == 1 else f"steps {out[0]['step']}-{out[-1]['step']}"
    return out, f"run log: {len(out)} step loss(es) lost from it ({steps}) rebuilt from {source}"
