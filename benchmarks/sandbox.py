"""What the code box costs per program: the box against a plain ``python -I`` subprocess.

    python3 benchmarks/sandbox.py [--runs 20]

"plain" is the sandbox as it was before the box (``subprocess.Popen([python, "-I", file])``
in a new session with rlimits set in ``preexec_fn``, which forks the caller); "box" is
``engine.evaluate.sandbox.run_box`` (a launcher spawned by exec, namespaces, Landlock,
seccomp, nobody). Both run the same program: a trivial assert, and an import-heavier one.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROGRAMS = {
    "assert": "def add(a, b):\n    return a + b\nassert add(2, 3) == 5\n",
    "imports": "import json, re, collections, itertools, fractions, decimal\nassert json.loads('[1]') == [1]\n",
}


def plain(program: str) -> None:
    def limits():
        resource.setrlimit(resource.RLIMIT_CPU, (12, 12))

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "a.py").write_text(program)
        subprocess.run(
            [sys.executable, "-I", "a.py"],
            cwd=tmp,
            env={"PATH": "/usr/bin:/bin", "HOME": tmp},
            capture_output=True,
            start_new_session=True,
            preexec_fn=limits,
            check=True,
            timeout=10,
        )


def boxed(program: str) -> None:
    from engine.evaluate.sandbox import run_box

    r = run_box(program, 10)
    assert r["exit"] == 0, r


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=20)
    args = p.parse_args()
    from engine.evaluate.sandbox import isolation_line

    print(isolation_line())
    print(f"{os.cpu_count()} CPUs; median of {args.runs} runs, seconds per program")
    print("| program | plain | box | box / plain |")
    print("|---|---|---|---|")
    for name, prog in PROGRAMS.items():
        t = {}
        for way, fn in (("plain", plain), ("box", boxed)):
            times = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                fn(prog)
                times.append(time.perf_counter() - t0)
            t[way] = statistics.median(times)
        print(f"| {name} | {t['plain']:.3f} | {t['box']:.3f} | {t['box'] / t['plain']:.1f}x |")


if __name__ == "__main__":
    main()
