"""A scripted run log for cockpit tests: deterministic records, fixed times, no model."""

from __future__ import annotations

import asyncio
import io
import math
import random

from rich.console import Console

T0 = 1_750_000_000.0
"""The scripted run starts at this unix time; tests pin the app's clock near it."""


def run_records(
    steps: int = 300, max_steps: int = 600, t0: float = T0, gpu_used_mb: int = 71_000
) -> list[dict]:
    rnd = random.Random(0)
    out: list[dict] = [
        {"t": t0, "kind": "data", "rows": 1200, "val_rows": 120},
        {"t": t0 + 4, "kind": "start", "step": 0, "max_steps": max_steps, "base_model": "tiny", "pid": 1},
        {"t": t0 + 4, "kind": "train_begin", "step": 0, "max_steps": max_steps},
    ]
    t = t0 + 5
    for s in range(1, steps + 1):
        t += 0.5
        loss = 2.8 * math.exp(-s / 150) + 0.9 + rnd.random() * 0.1
        if s == 120:
            loss *= 1.9  # a spike
        out.append(
            {
                "t": round(t, 3),
                "kind": "step",
                "step": s,
                "loss": loss,
                "lr": 2e-4,
                "grad_norm": 0.8,
                "epoch": round(s / 200, 4),
                "tokens": s * 4096,
                "tokens_per_s": 8192.0,
                "s_per_step": 0.5,
                "max_steps": max_steps,
                "phase": "foundation",
            }
        )
        if s == 120:
            out.append(
                {
                    "t": round(t, 3),
                    "kind": "alert",
                    "step": s,
                    "rule": "spike",
                    "level": "warning",
                    "message": f"loss {loss:.3f} is 1.9x the recent median",
                    "advice": "reduce the learning rate or check for bad data",
                }
            )
        if s % 100 == 0:
            ev = loss + 0.2
            out.append(
                {"t": round(t, 3), "kind": "eval", "step": s, "eval_loss": ev, "perplexity": math.exp(ev)}
            )
            out.append(
                {
                    "t": round(t + 1, 3),
                    "kind": "save",
                    "step": s,
                    "path": f"outputs/scripted/checkpoint-{s}",
                    "loss": loss,
                    "eval_loss": ev,
                }
            )
    out.append(
        {
            "t": round(t, 3),
            "kind": "gpu",
            "step": steps,
            "available": True,
            "gpus": [
                {
                    "index": 0,
                    "name": "NVIDIA H100 80GB HBM3",
                    "used_mb": gpu_used_mb,
                    "total_mb": 81_559,
                    "util": 97,
                    "temp_c": 64,
                    "power_w": 512.3,
                }
            ],
            "torch_peak_mb": 61_440.0,
        }
    )
    return out


def last_t(records: list[dict]) -> float:
    return max(r["t"] for r in records if isinstance(r, dict))


def text_of(renderable, width: int = 100) -> str:
    """Plain text of what a Static shows (its ``content``)."""
    console = Console(width=width, file=io.StringIO(), record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


async def wait_for(pilot, cond, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await pilot.pause(0.05)


def fields(app) -> str:
    return text_of(app.query_one("#progress").content)
