#!/usr/bin/env python3
"""What the cockpit costs training, and what its loss chart costs to redraw, in one run.

    python3 benchmarks/ui_overhead.py                          # GPU: a 24-layer model, seq 2048
    python3 benchmarks/ui_overhead.py --shape demo --steps 40  # CPU smoke run: the embedded demo
    python3 benchmarks/ui_overhead.py --config my.yaml         # any config (its model must be local)
    python3 benchmarks/ui_overhead.py --only chart             # just the redraw timing

1. Training overhead. The same run (same config, model, data, steps, seed) is trained
   headless (``train --headless``) and inside the cockpit on a pseudo-terminal of 120x40
   (``train``, the real app drawing real frames, read by this script like a terminal
   would), alternating, ``--pairs`` times. Each run's tokens/s is read from its own run
   log over the steps after ``--warmup`` (tokens between the first and last of them over
   the wall time between their records; evaluation and saving are off), with the median
   step time. Reported: each run, the mean of each mode, and the ratios cockpit / headless
   (target: the cockpit costs under 1%, tokens/s ratio >= 0.99). Run it on a quiet machine:
   the headless runs' own spread is printed to show the noise floor.
2. Chart redraw. The loss chart inside the app at 120x40 with a 1,000,000-point train loss
   history and 1,000 eval points: the time of one redraw (downsampling + plotext build of
   the frame) for the whole run and the last 1,000 steps, smoothing on and off (target
   under 20 ms), against plotting the raw history without downsampling (100,000 points:
   the plain alternative). Plus the time to take a million step records in (an attach of a
   long run's log).
3. On a machine with nvidia-smi: the GPU panel's numbers next to nvidia-smi's, read at the
   same moment.
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.run.rundir import RunDir  # noqa: E402

SHAPES = {
    # hidden, layers, sequence_len, micro_batch_size
    "demo": None,
    "small": (256, 4, 1024, 4),
    "medium": (1024, 24, 2048, 4),
}


# -- 1. training overhead ------------------------------------------------------------------


def make_config(work: Path, args) -> Path:
    import yaml

    if args.config:
        raw = yaml.safe_load(Path(args.config).read_text())
    else:
        raw = yaml.safe_load((ROOT / "engine" / "assets" / "demo.yaml").read_text())
        raw["datasets"] = [
            {"path": str(ROOT / "engine" / "assets" / "demo_chat.jsonl"), "type": "chat_template"}
        ]
        shape = SHAPES[args.shape]
        if shape is not None:
            from engine.model.tiny import build_tiny_model

            hidden, layers, seq, micro = shape
            model = work / f"model-{args.shape}"
            if not model.exists():
                print(f"building a random {hidden}x{layers} Qwen3 in {model} ...", flush=True)
                build_tiny_model(model, hidden=hidden, layers=layers)
            # The demo's 320 rows make a single packed batch at this length: draw enough
            # rows from the same tables for ~100 steps an epoch.
            from engine.model.demo import demo_rows

            data = work / "bench_chat.jsonl"
            with data.open("w") as f:
                for row in demo_rows(n=60 * seq // 16, seed=1):
                    f.write(json.dumps(row) + "\n")
            raw["datasets"] = [{"path": str(data), "type": "chat_template"}]
            raw.update(base_model=str(model), sequence_len=seq, micro_batch_size=micro, bf16="auto")
    raw.update(
        max_steps=args.steps,
        num_epochs=10_000,  # max_steps decides
        val_set_size=0,
        eval_steps=None,
        save_steps=None,
        logging_steps=1,
        warmup_steps=min(int(raw.get("warmup_steps") or 0), args.warmup),
    )
    raw.pop("run_name", None)
    path = work / "bench.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def steady_tokens_per_s(events: Path, warmup: int) -> tuple[float, float, int]:
    """(tokens/s, median s/step, steps) over the steps after warmup, from a run log.

    tokens/s is wall-clock: tokens trained between the first and the last steady step over
    the time between their records (evaluation and saving are off in these runs).
    """
    from engine.run.events import dedupe_steps, read_events

    steps = [r for r in dedupe_steps(read_events(events).records) if r["step"] >= warmup]
    if len(steps) < 2:
        return float("nan"), float("nan"), len(steps)
    first, last = steps[0], steps[-1]
    tps = (last["tokens"] - first["tokens"]) / (last["t"] - first["t"])
    sps = statistics.median(r["s_per_step"] for r in steps[1:] if r.get("s_per_step"))
    return tps, sps, len(steps) - 1


def run_headless(config: Path, work: Path, name: str, env: dict) -> Path:
    out = work / name
    out.mkdir()
    cmd = [sys.executable, "-m", "cockpit.cli", "train", str(config), "--headless", "--resume", "never"]
    cmd += ["--run-name", name, "--logs-dir", str(out / "logs")]
    with open(out / "stderr.txt", "w") as err:
        subprocess.run(cmd, cwd=out, env=env, stdout=subprocess.DEVNULL, stderr=err, check=True)
    return RunDir(out / "logs" / name).events


def run_cockpit(config: Path, work: Path, name: str, env: dict, size=(40, 120)) -> tuple[Path, int]:
    """The cockpit on a pseudo-terminal, its output read as a terminal would; q once done."""
    import fcntl
    import termios

    out = work / name
    out.mkdir()
    log = RunDir(out / "logs" / name).events
    cmd = [sys.executable, "-m", "cockpit.cli", "train", str(config), "--resume", "never"]
    cmd += ["--run-name", name, "--logs-dir", str(out / "logs")]
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(out)
        os.execvpe(cmd[0], cmd, {**env, "TERM": "xterm-256color"})
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", size[0], size[1], 0, 0))
    received = [0]

    def read() -> None:
        while True:
            try:
                chunk = os.read(fd, 1 << 16)
            except OSError:
                return
            if not chunk:
                return
            received[0] += len(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                raise RuntimeError(f"the cockpit exited early ({status}); see {out}")
            if log.exists() and b'"kind":"end"' in log.read_bytes()[-4096:]:
                break
            time.sleep(0.5)
        time.sleep(1.0)
        os.write(fd, b"q")  # training is over: q quits at once
        for _ in range(600):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
    finally:
        os.close(fd)
    return log, received[0]


def bench_training(args) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "TOKENIZERS_PARALLELISM": "false",
    }
    with tempfile.TemporaryDirectory(prefix="ui-overhead-") as tmp:
        work = Path(tmp)
        config = make_config(work, args)
        print(f"\n== training overhead: {args.steps} steps, tokens/s over steps > {args.warmup}")
        print(f"config: {args.config or args.shape}  (pairs: {args.pairs}, order alternates)")
        rows = []
        for i in range(args.pairs):
            order = ("headless", "cockpit") if i % 2 == 0 else ("cockpit", "headless")
            for mode in order:
                name = f"{mode}-{i}"
                t = time.time()
                if mode == "headless":
                    log, drawn = run_headless(config, work, name, env), 0
                else:
                    log, drawn = run_cockpit(config, work, name, env)
                tps, sps, n = steady_tokens_per_s(log, args.warmup)
                rows.append((mode, i, tps, sps, n, drawn, time.time() - t))
                print(
                    f"  {name:<11} {tps:>12,.1f} tok/s  {sps * 1000:8.1f} ms/step  over {n} steps"
                    f"  ({time.time() - t:.0f}s wall{f', {drawn / 1e6:.1f} MB drawn' if drawn else ''})",
                    flush=True,
                )
        head = [r[2] for r in rows if r[0] == "headless"]
        cock = [r[2] for r in rows if r[0] == "cockpit"]
        ratio = statistics.mean(cock) / statistics.mean(head)
        step_ratio = statistics.mean(r[3] for r in rows if r[0] == "headless") / statistics.mean(
            r[3] for r in rows if r[0] == "cockpit"
        )
        print(f"\n  {'mode':<10}{'runs':>5}{'mean tok/s':>14}{'min':>12}{'max':>12}")
        for mode, vals in (("headless", head), ("cockpit", cock)):
            print(
                f"  {mode:<10}{len(vals):>5}{statistics.mean(vals):>14,.1f}{min(vals):>12,.1f}{max(vals):>12,.1f}"
            )
        verdict = "PASS" if ratio >= 0.99 else "over 1%"
        print(f"  cockpit / headless = {ratio:.4f}  (cost {100 * (1 - ratio):+.2f}%; target < 1%: {verdict})")
        print(f"  by median step time: headless / cockpit = {step_ratio:.4f}")
        spread = (max(head) - min(head)) / statistics.mean(head) if len(head) > 1 else float("nan")
        print(f"  run-to-run spread of headless alone: {100 * spread:.2f}%")


# -- 2. chart redraw -----------------------------------------------------------------------


def bench_chart(points: int, reps: int) -> None:
    import asyncio

    asyncio.run(_bench_chart(points, reps))


async def _bench_chart(points: int, reps: int) -> None:
    import math
    import random

    from textual_plotext import PlotextPlot

    from cockpit.app import CockpitApp
    from cockpit.messages import StepsLogged
    from cockpit.source import Source
    from cockpit.widgets.loss_chart import ZOOMS, LossChart

    print(
        f"\n== loss chart redraw at 120x40, {points:,}-point history (ms: wall; cpu: this thread's CPU time)"
    )
    app = CockpitApp(Source(), clock=lambda: 0.0)  # no records: the chart is fed directly below
    async with app.run_test(size=(120, 40)) as pilot:
        chart = app.query_one(LossChart)
        plot = chart.query_one(PlotextPlot)
        rnd = random.Random(0)
        records = [
            {
                "kind": "step",
                "step": s,
                "loss": 2.8 * math.exp(-s / (points / 4)) + 0.9 + 0.05 * rnd.random(),
                "epoch": 3.0 * s / points,
            }
            for s in range(1, points + 1)
        ]
        t = time.perf_counter()
        for i in range(0, points, 20_000):
            chart.on_steps_logged(StepsLogged(records[i : i + 20_000]))
        ingest = time.perf_counter() - t
        for s in range(points // 1000, points + 1, points // 1000):
            chart.eval.add(float(s), 1.1)
        await pilot.pause(0.3)
        print(f"  {'view':<34}{'median ms':>10}{'p95 ms':>9}{'cpu ms':>9}{'points drawn':>14}")
        for zoom in (0, ZOOMS.index(1_000)):
            for smoothing in (True, False):
                chart.zoom, chart.smoothing = zoom, smoothing
                times, cpu = [], []
                for _ in range(reps):
                    t, c = time.perf_counter(), time.thread_time()
                    chart.redraw()
                    plot.render()  # plotext builds the frame here
                    times.append((time.perf_counter() - t) * 1000)
                    cpu.append((time.thread_time() - c) * 1000)
                times.sort()
                drawn = len(chart.train.sample(max(plot.size.width - 8, 10), _first(chart))[0])
                label = f"{'whole run' if zoom == 0 else 'last 1,000 steps'}, smoothing {'on' if smoothing else 'off'}"
                p95 = times[int(0.95 * (len(times) - 1))]
                verdict = "" if times[len(times) // 2] < 20 else "  (over 20 ms)"
                print(
                    f"  {label:<34}{statistics.median(times):>10.2f}{p95:>9.2f}"
                    f"{statistics.median(cpu):>9.2f}{drawn:>14,}{verdict}"
                )
        print(
            f"  taking in {points:,} step records (attach of a long log): {ingest:.2f} s "
            f"({points / ingest:,.0f} records/s)"
        )
        naive = min(points, 100_000)
        xs = [float(s) for s in range(naive)]
        ys = [r["loss"] for r in records[:naive]]
        plt = plot.plt
        t = time.perf_counter()
        plt.clear_data()
        plt.clear_figure()
        plt.plotsize(plot.size.width, plot.size.height)
        plt.plot(xs, ys, marker="braille")
        plt.build()
        print(
            f"  plain alternative: plotext on the raw {naive:,} points, no downsampling: "
            f"{(time.perf_counter() - t) * 1000:,.0f} ms per redraw"
        )


def _first(chart):
    from cockpit.widgets.loss_chart import ZOOMS

    n = ZOOMS[chart.zoom]
    return None if n is None else chart.train.last_step - n + 1


# -- 3. GPU panel vs nvidia-smi ------------------------------------------------------------


def bench_gpu_panel() -> None:
    import shutil

    if not shutil.which("nvidia-smi"):
        print("\n== GPU panel vs nvidia-smi: skipped (no nvidia-smi here)")
        return
    from cockpit.widgets.gpu_panel import local_sample

    print("\n== GPU panel vs nvidia-smi, read at the same moment")
    query = "index,name,memory.used,memory.total,utilization.gpu,temperature.gpu,power.draw"
    smi = (
        subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
        )
        .stdout.strip()
        .splitlines()
    )
    sample = local_sample()
    print(f"  {'':<6}{'used MiB':>10}{'total MiB':>10}{'util %':>8}{'temp C':>8}{'power W':>9}")
    for g, line in zip(sample.gpus, smi, strict=False):
        f = [x.strip() for x in line.split(",")]
        print(
            f"  panel {g['index']}{g['used_mb']:>9}{g['total_mb']:>10}{g['util']:>8}{g['temp_c']:>8}{g['power_w']:>9}"
        )
        print(f"  smi   {f[0]}{f[2]:>9}{f[3]:>10}{f[4]:>8}{f[5]:>8}{f[6]:>9}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="medium", help="model built for the run")
    ap.add_argument("--config", help="train this config instead (its base_model must be local)")
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--pairs", type=int, default=2, help="headless/cockpit pairs, order alternating")
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--only", choices=["training", "chart", "gpu"])
    args = ap.parse_args()
    if args.only in (None, "chart"):
        bench_chart(args.points, args.reps)
    if args.only in (None, "gpu"):
        bench_gpu_panel()
    if args.only in (None, "training"):
        bench_training(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
