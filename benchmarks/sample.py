"""Benchmark: `leviathan-cockpit sample` against `awk 'NR%10==1'` on the same generated corpus.

    python benchmarks/sample.py --size-gb 2.5            # generate, time both, print a table
    python benchmarks/sample.py --size-gb 2.5 --keep DIR # keep the corpus in DIR for reruns

The corpus is written to a temporary folder (never committed): chat rows shaped like the
guide's (system/user/assistant turns, ~2.3 KB a row like the 13 GB / 5.5M-row corpus), a
`_category` in 13 categories with a skewed mix, 0.1% of rows without it, 1 row in 20,000 cut
short (malformed), mostly ASCII (json.dumps' default) with a fifth of the rows in raw UTF-8.

Both tools run as child processes, one after the other, on the same file, warm in the page
cache (a first untimed `cat > /dev/null` warms it for both); the best of --repeat runs is
kept. Peak memory is the child's ru_maxrss (the largest of its processes); CPU is user +
system time of all its processes. The load average is printed: on a shared machine wall
times move with it. Targets from the issue: within 3x of awk's time, under 500 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CATEGORIES = {
    "general": 20,
    "coding": 15,
    "reasoning": 12,
    "knowledge": 12,
    "psychology": 8,
    "philosophy": 6,
    "esoteric": 8,
    "red_team": 3,
    "identity": 0.1,
    "math": 6,
    "science": 5,
    "creative": 4,
    "dialogue": 1,
}
WORDS = (  # noqa: SIM905
    "the of and to in is that for it as with was on be by at this an which from or have not are but "
    "had they his her she he we you their there been one all were when what your can said more will "
    "about would if so its no up out into than them some could only time other any these two may then "
    "do first new now very such like also our way tarot kundalini hermetic correspondence recursion"
).split()
UNICODE = ["naïve", "über", "café", "—", "“quoted”", "λόγος", "ψυχή", "東京", "🜂"]


def _text(rng: random.Random, n: int, unicode: bool) -> str:
    words = [rng.choice(WORDS) for _ in range(n)]
    if unicode:
        for _ in range(max(1, n // 40)):
            words[rng.randrange(n)] = rng.choice(UNICODE)
    tail = rng.choice(["", "\n\n```python\ndef f(x):\n    return x * 2\n```\n", '\n- "a"\n- b\\c\t'])
    return " ".join(words) + tail


def generate(path: Path, size_bytes: int, seed: int = 0) -> tuple[int, int]:
    """Write rows until the file reaches size_bytes; returns (rows, malformed rows)."""
    rng = random.Random(seed)
    names, weights = list(CATEGORIES), list(CATEGORIES.values())
    # A pool of distinct rows, rotated with fresh categories: fast to write, realistic to parse.
    pool = []
    for _ in range(4000):
        uni = rng.random() < 0.2
        row = {
            "messages": [
                {"role": "system", "content": "You are Leviathan, the Abyssal Mind."},
                {"role": "user", "content": _text(rng, rng.randint(8, 80), uni)},
                {"role": "assistant", "content": _text(rng, rng.randint(40, 600), uni)},
            ]
        }
        pool.append((row, uni))
    written = rows = bad = 0
    with open(path, "wb", buffering=2**22) as f:
        while written < size_bytes:
            chunk = []
            for _ in range(2000):
                row, uni = pool[rng.randrange(len(pool))]
                r = dict(row)
                if rng.random() >= 0.001:
                    r["_category"] = rng.choices(names, weights)[0]
                line = json.dumps(r, ensure_ascii=not uni).encode()
                if rng.random() < 0.00005:
                    line = line[: len(line) // 2]
                    bad += 1
                chunk.append(line)
                rows += 1
            data = b"\n".join(chunk) + b"\n"
            f.write(data)
            written += len(data)
    return rows, bad


def child_peak(cmd: list[str], out_path: str) -> tuple[float, float, int, float]:
    """(wall s, peak RSS MB, exit code, CPU s) of cmd, run in a fresh wrapper process so that
    ru_maxrss and the CPU times are that command's alone (its worker processes included)."""
    wrapper = (
        "import resource,subprocess,sys,time,json;"
        "t=time.perf_counter();"
        f"p=subprocess.run({cmd!r},stdout=open({out_path!r},'wb'),stderr=subprocess.PIPE);"
        "w=time.perf_counter()-t;"
        "sys.stderr.buffer.write(p.stderr[-3000:]) if p.returncode else None;"
        "r=resource.getrusage(resource.RUSAGE_CHILDREN);"
        "print(json.dumps([w,r.ru_maxrss/1024,p.returncode,r.ru_utime+r.ru_stime]))"
    )
    res = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(res.stderr)
    if res.stderr:
        sys.stderr.write(res.stderr)
    wall, peak, rc, cpu = json.loads(res.stdout.strip().splitlines()[-1])
    return wall, peak, rc, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gb", type=float, default=2.5, help="corpus size in GiB (default 2.5)")
    ap.add_argument("--keep", metavar="DIR", help="write/reuse the corpus in DIR instead of a temp folder")
    ap.add_argument("--repeat", type=int, default=2, help="timed runs of each tool (best is kept)")
    args = ap.parse_args()

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="lev-sample-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    corpus = root / "corpus.jsonl"
    size = int(args.size_gb * 2**30)
    try:
        if not corpus.exists() or abs(corpus.stat().st_size - size) > 2**24:
            t0 = time.perf_counter()
            rows, bad = generate(corpus, size)
            print(
                f"generated {corpus} ({corpus.stat().st_size / 2**30:.2f} GiB, {rows:,} rows, "
                f"{bad} malformed) in {time.perf_counter() - t0:.0f}s",
                file=sys.stderr,
            )
        mb = corpus.stat().st_size / 2**20
        subprocess.run(["cat", str(corpus)], stdout=subprocess.DEVNULL, check=True)  # warm the cache
        load0 = os.getloadavg()[0]

        ours = [
            sys.executable,
            "-m",
            "cockpit.cli",
            "sample",
            str(corpus),
            "-o",
            str(root / "ours.jsonl"),
            "--fraction",
            "0.1",
            "--by",
            "_category",
            "--seed",
            "1",
        ]
        awk = ["awk", "NR%10==1", str(corpus)]
        results = {}
        jobs = min(os.cpu_count() or 1, 8)
        for name, cmd, out in (
            ("awk 'NR%10==1'", awk, str(root / "awk.jsonl")),
            ("sample --jobs 1", [*ours, "--jobs", "1"], os.devnull),
            (f"sample --jobs {jobs}", [*ours, "--jobs", str(jobs)], os.devnull),
        ):
            runs = [child_peak(cmd, out) for _ in range(args.repeat)]
            rc = max(r[2] for r in runs)
            if rc:
                print(f"{name} failed with exit code {rc}", file=sys.stderr)
                return 1
            results[name] = (min(r[0] for r in runs), max(r[1] for r in runs), min(r[3] for r in runs))
        load1 = os.getloadavg()[0]

        awk_t = results["awk 'NR%10==1'"][0]
        print(
            f"\ncorpus: {mb / 1024:.2f} GiB, {os.cpu_count()} cores, load average {load0:.2f} -> {load1:.2f}"
        )
        awk_cpu = results["awk 'NR%10==1'"][2]
        print(f"{'tool':<28}{'wall s':>8}{'MB/s':>8}{'x awk':>7}{'CPU s':>8}{'x awk':>7}{'peak MB':>9}")
        for name, (t, peak, cpu) in results.items():
            print(
                f"{name:<28}{t:>8.2f}{mb / t:>8.0f}{t / awk_t:>7.2f}{cpu:>8.2f}{cpu / awk_cpu:>7.2f}{peak:>9.0f}"
            )
        ours_t = min(t for name, (t, _, _) in results.items() if name.startswith("sample"))
        ours_peak = max(p for name, (_, p, _) in results.items() if name.startswith("sample"))
        ok = ours_t <= 3 * awk_t and ours_peak < 500
        print(f"\ntarget (<= 3x awk, < 500 MB): {'met' if ok else 'NOT met'}")
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
