"""``attach`` of a 1M-step run log with a 10k-step one overlaid: time to the first screen that
shows both runs' curves, and the cockpit's memory (RSS), against ``attach`` of the big log alone.

    python3 benchmarks/compare_attach.py                 # 1M + 10k steps (needs tmux)
    python3 benchmarks/compare_attach.py --steps 100000

The logs are benchmarks/compare_load.py's (every field the engine writes on a step record, an
eval every 1000 steps, a gpu record every 10). The cockpit runs in a detached tmux window at
120x40; the screen is read with ``tmux capture-pane`` every 0.1 s until the Compare tab's legend
names both runs at their last step (the curves are drawn from the same data in the same redraw).
The memory is the app process's VmRSS then, and again after 10 s more of following both logs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.compare_load import write_log  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def rss_mb(pid: int) -> float:
    """The RSS of the cockpit: the python process under the tmux pane's shell, if any."""
    for p in [pid, *child_pids(pid)]:
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        if "python" in Path(f"/proc/{p}/cmdline").read_text(errors="replace"):
            kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
            return kb / 1024
    return float("nan")


def child_pids(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(x) for x in out]


def first_screen(args: list[str], markers: dict[str, str], session: str, timeout: float = 300.0):
    """(seconds, RSS MB) when each marker is first on screen; the RSS then and 10 s after the last."""
    exe = Path(sys.executable).parent / "leviathan-cockpit"
    cmd = f"PYTHONPATH={ROOT} {exe} attach {' '.join(args)}"
    t0 = time.perf_counter()
    subprocess.run(["tmux", "new", "-d", "-s", session, "-x", "120", "-y", "40", cmd], check=True)
    out = subprocess.run(
        ["tmux", "display", "-p", "-t", session, "#{pane_pid}"], capture_output=True, text=True
    )
    pid = int(out.stdout)
    seen: dict[str, float] = {}
    try:
        while len(seen) < len(markers) and time.perf_counter() - t0 < timeout:
            screen = subprocess.run(
                ["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True
            )
            for name, text in markers.items():
                if name not in seen and text in screen.stdout:
                    seen[name] = (time.perf_counter() - t0, rss_mb(pid))
            time.sleep(0.1)
        first = rss_mb(pid)
        time.sleep(10)
        return seen, first, rss_mb(pid)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False)
        time.sleep(1)  # the tmux server exits with its last session: the next `new` must not race it


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1_000_000)
    ap.add_argument("--second", type=int, default=10_000)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lev-attach-"))
    big, small = work / "full", work / "ten"
    for d, n in ((big, a.steps), (small, a.second)):
        d.mkdir()
        write_log(d / "events.jsonl", n)
    header = "attached, read-only"
    done = f"completed at step {a.steps:,}"
    both = {"legend: big run": f"full: step {a.steps:,}", "legend: small run": f"ten: step {a.second:,}"}
    rows = [
        (
            "attach BIG",
            first_screen([str(big)], {"screen": header, "dashboard loaded": done}, f"ba{os.getpid()}"),
        ),
        (
            "attach BIG SMALL",
            first_screen(
                [str(big), str(small)],
                {"screen": header, **both, "dashboard loaded": done},
                f"bb{os.getpid()}",
            ),
        ),
    ]
    print("| command | on screen | s | RSS MB then |\n|---|---|---|---|")
    for name, (seen, _first, later) in rows:
        for what, (took, rss) in seen.items():
            print(f"| {name} | {what} | {took:.1f} | {rss:.0f} |")
        print(f"| {name} | 10 s after the last | | {later:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
