"""A scripted run for cockpit tests: deterministic records, fixed times, no model.

``scripted_job(run_dir, records)`` starts this file as a child process that behaves like a
launched trainer (``engine.dist_main`` under ``engine.cli.launcher``): it holds the run lock,
writes its records to ``run_dir/events.jsonl``, then reads the run's control file as rank 0
does and answers each command in the run log (pause -> ``paused``, save -> ``save``, eval ->
``eval``, stop -> a ``save`` of the current step and the ``end`` record). The cockpit follows
it through ``LaunchedSource``: the same branch a real run takes, without a model.
"""

from __future__ import annotations

import io
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from tests.wait import wait_for

ROOT = Path(__file__).resolve().parent.parent
LIFETIME_S = 120.0
"""A scripted job left running by a test ends itself after this long."""

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


def fields(app) -> str:
    return text_of(app.query_one("#progress").content)


# -- the scripted job ------------------------------------------------------------------------


def scripted_job(run_dir: Path, records: list[dict], *, end: dict | None = None, exit_code: int = 0):
    """Start the scripted trainer on ``run_dir``; returns the ``LaunchedJob`` the cockpit holds.

    ``end``: an ``end`` record to write after the records, exiting with ``exit_code`` (a run
    that fails or refuses its input); without it the job trains until told to stop.
    """
    from engine.cli.launcher import LaunchedJob

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "script.json").write_text(json.dumps({"records": records, "end": end, "exit": exit_code}))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))),
    }
    proc = subprocess.Popen([sys.executable, __file__, str(run_dir)], env=env, start_new_session=True)
    return LaunchedJob(run_dir, 1, 0, proc, ["python", "tests/cockpit_script.py", str(run_dir)], None, 0)


JOBS: list = []
"""Every scripted job started, for ``end_jobs``."""


def launched_app(
    run_dir: Path,
    records: list[dict],
    *,
    clock_t: float | None = None,
    config=None,
    local_gpu: bool = False,
    **job_kw,
):
    """The cockpit over a scripted job, as ``cockpit.launch.build_launched_app`` builds it over a
    real one. ``local_gpu``: sample this machine's GPUs (a real launched job's default); off,
    the GPU panel shows the script's H100 from the run log, the same on every machine."""
    from cockpit.app import CockpitApp
    from cockpit.source import LaunchedSource

    job = scripted_job(run_dir, records, **job_kw)
    JOBS.append(job)
    config = {"val_set_size": 0.1} if config is None else config
    source = LaunchedSource(job, poll_s=0.05, run_name="scripted", config=config)
    source.local_gpu = local_gpu
    t = clock_t if clock_t is not None else (last_t(records) + 60 if records else T0)
    return CockpitApp(source, clock=lambda: t)


def attached_app(run_dir: Path, records: list[dict], *, clock_t: float | None = None, live: bool = False):
    """The cockpit attached read-only to a run log (``leviathan-cockpit attach``): one on disk,
    or (``live``) the log of a scripted job that is still training."""
    from cockpit.app import CockpitApp
    from cockpit.source import FileSource

    log = Path(run_dir) / "events.jsonl"
    if live:
        JOBS.append(scripted_job(run_dir, records))
        wait_for(log.exists, 30, f"the scripted job to start {log}", running=JOBS[-1], every_s=0.01)
    else:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        log.write_text("".join(json.dumps(r) + "\n" for r in records))
    source = FileSource(log, poll_s=0.05, run_name="scripted", run_dir=Path(run_dir))
    t = clock_t if clock_t is not None else (last_t(records) + 60 if records else T0)
    return CockpitApp(source, clock=lambda: t)


def end_jobs() -> None:
    """Stop what a test left running: a stop command first, then the signal."""
    while JOBS:
        job = JOBS.pop()
        if job.poll() is None:
            job.control("stop", reason="test over")
            try:
                job.wait(10)
            except subprocess.TimeoutExpired:
                job.terminate(grace_s=5)


def append_records(run_dir: Path, records: list[dict]) -> None:
    """More records in the job's run log, as if it had trained on (O_APPEND: whole lines)."""
    with open(Path(run_dir) / "events.jsonl", "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))


def _play(run_dir: Path) -> int:
    from engine.run import records
    from engine.run.control import Controls
    from engine.run.control_file import ControlFile, control_path
    from engine.run.heartbeat import Heartbeat
    from engine.run.runlock import RunLock

    plan = json.loads((run_dir / "script.json").read_text())
    with RunLock(run_dir), Heartbeat(run_dir), open(run_dir / "events.jsonl", "a") as log:

        def emit(kind: str, **fields) -> None:
            record = {"t": round(time.time(), 3), "kind": kind, **fields}
            records.check(record)  # held to the declarations as the trainer's are (strict in tests)
            log.write(json.dumps(record) + "\n")
            log.flush()

        for r in plan["records"]:
            log.write(json.dumps(r) + "\n")
        log.flush()
        if plan["end"] is not None:
            log.write(json.dumps(plan["end"]) + "\n")
            return plan["exit"]
        steps = [r.step for r in map(records.decode, plan["records"]) if isinstance(r, records.Step)]
        step = steps[-1] if steps else 0
        controls, commands = Controls(), ControlFile(control_path(run_dir), from_start=True)
        deadline = time.time() + LIFETIME_S
        while time.time() < deadline:
            for cmd in commands.poll(controls):
                name = cmd["command"]
                if name in ("pause", "resume", "toggle_pause"):
                    emit("paused" if controls.pause.is_set() else "resumed", step=step)
                elif name == "save":
                    emit("save", step=step, path=f"outputs/scripted/checkpoint-{step}", loss=1.0)
                elif name == "eval":
                    emit("eval", step=step, eval_loss=1.1, perplexity=math.exp(1.1))
            if controls.stop.is_set():
                break
            time.sleep(0.02)
        time.sleep(0.3)  # the step under way finishes first
        emit("save", step=step, path=f"outputs/scripted/checkpoint-{step}", loss=1.0)
        emit("end", step=step, status="stopped", reason=controls.stop_reason or "time limit")
    return 0


if __name__ == "__main__":
    sys.exit(_play(Path(sys.argv[1])))
