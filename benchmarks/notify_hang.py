"""Does a webhook that hangs slow the training steps? Step times of a tiny CPU run without
``notify:``, with a webhook on 127.0.0.1 that answers, and with one that never answers (every
request held until its timeout, then retried), events on every eval, checkpoint and alert.

The step time is the run log's ``s_per_step`` (median over the steps after the first two); the
close time is how long the run's end waited for the notify thread (bounded by its timeouts).

    python3 benchmarks/notify_hang.py [--steps 40] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def server(hang: bool) -> tuple[ThreadingHTTPServer, threading.Event]:
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            if hang:
                release.wait(60)
                return
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    s = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    s.daemon_threads = True
    threading.Thread(target=s.serve_forever, daemon=True).start()
    return s, release


def one_run(model: Path, root: Path, steps: int, url: str | None) -> tuple[float, float, int]:
    from engine.config.config import validate
    from engine.run.events import dedupe_steps, read_events
    from engine.train.train import run

    raw = {
        "base_model": str(model),
        "datasets": [{"path": str(ROOT / "engine/assets/demo_chat.jsonl"), "type": "chat_template"}],
        "sequence_len": 128,
        "micro_batch_size": 4,
        "max_steps": steps,
        "learning_rate": 0.003,
        "optimizer": "adamw_torch",
        "val_set_size": 16,
        "eval_steps": 5,
        "save_steps": 10,
        "output_dir": str(root / "out"),
        "logs_dir": str(root / "logs"),
        "run_name": "bench",
    }
    if url:
        raw["notify"] = {
            "webhook": url,
            "on": ["alert", "end", "checkpoint", "eval"],
            "timeout_s": 5,
            "retries": 2,
        }
    config, _ = validate(raw, root / "bench.yaml")
    result = run(config, resume="never")
    records = read_events(Path(result.run_dir) / "events.jsonl").records
    times = [r["s_per_step"] for r in dedupe_steps(records)[2:] if r.get("s_per_step")]
    end_t = next(r["t"] for r in records if r["kind"] == "end")
    close_s = time.time() - end_t  # time between the end record and run() returning, roughly
    failed = sum(1 for r in records if r.get("rule") == "notify_failed")
    return statistics.median(times), close_s, failed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    from engine.model.tiny import build_tiny_model

    tmp = Path(tempfile.mkdtemp())
    model = build_tiny_model(tmp / "model")
    ok, _ = server(False)
    hanging, release = server(True)
    urls = {
        "no notify": None,
        "webhook answers": f"http://127.0.0.1:{ok.server_address[1]}/hook",
        "webhook hangs": f"http://127.0.0.1:{hanging.server_address[1]}/hook",
    }
    rows: dict[str, list] = {k: [] for k in urls}
    for r in range(args.rounds):
        for name, url in urls.items():  # interleaved, so that load on the machine hits each alike
            rows[name].append(one_run(model, tmp / f"{r}-{name.replace(' ', '_')}", args.steps, url))
    release.set()
    base = statistics.median(x[0] for x in rows["no notify"])
    print("| condition | median s/step | ratio to no notify | end waited (s) | notify_failed alerts |")
    print("|---|---|---|---|---|")
    for name, runs in rows.items():
        step = statistics.median(x[0] for x in runs)
        close = statistics.median(x[1] for x in runs)
        failed = runs[-1][2]
        print(f"| {name} | {step:.4f} | {step / base:.2f} | {close:.1f} | {failed} |")


if __name__ == "__main__":
    main()
