"""Benchmark: `leviathan-cockpit sample` against awk's single pass (`awk 'NR%10==1'`) on one corpus.

    python benchmarks/sample.py                        # guide-shaped, 170k rows (~400 MB)
    python benchmarks/sample.py --rows 170000 --copies 6 --keep DIR   # ~2.4 GB, the issue's size
    python benchmarks/sample.py --shape mixed --size-gb 2.5           # UTF-8, malformed, no key

Corpora (written to a temporary folder or --keep DIR, never committed):

- ``guide`` (default): ``benchmarks/prepare.py``'s generator, shaped like the guide's 13 GB
  corpus: OpenAI ``messages``, ``_category`` last with an uneven mix of 10, ~2.4 KB a row on
  average, median ~1.6 KB, 1% of rows 20-50 KB. ``--copies N`` writes it N times in a row
  (the size of the issue's 1M-row run without generating 1M rows: same shape, same per-row work).
- ``mixed``: 13 categories, 0.1% of rows without the key, 1 row in 20,000 cut short, a fifth
  of the rows in raw UTF-8 (the rest ASCII-escaped, as ``json.dumps`` writes).

Every tool runs as a child process on the same file, warm in the page cache; the runs are
interleaved (awk, sample, ... then again) --repeat times and the best of each kept, so a load
that comes and goes hits them alike. CPU is user + system of the child and its processes, the
figure to trust on a shared machine (wall times move with the load: the load average is
printed). ``startup`` is ``sample --help``: the interpreter, the CLI and its imports, paid once
a run whatever the size. The sample's output is checked to be the same bytes as ``--strict``'s
(every row parsed in full, the old way). Target from issue 19: within 3x of awk.
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prepare import generate as generate_guide  # noqa: E402

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


def corpus_file(root: Path, args) -> Path:
    """The corpus to sample, generated on first use (reused from --keep DIR)."""
    if args.shape == "mixed":
        corpus, size = root / "mixed.jsonl", int(args.size_gb * 2**30)
        if not corpus.exists() or abs(corpus.stat().st_size - size) > 2**24:
            rows, bad = generate(corpus, size)
            print(f"generated {corpus}: {rows:,} rows, {bad} malformed", file=sys.stderr)
        return corpus
    one = root / f"guide-{args.rows}.jsonl"
    info = generate_guide(one, args.rows)
    if args.copies == 1:
        return one
    corpus = root / f"guide-{args.rows}x{args.copies}.jsonl"
    if not corpus.exists() or corpus.stat().st_size != args.copies * one.stat().st_size:
        with open(corpus, "wb") as out:
            for _ in range(args.copies):
                with open(one, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
    print(f"corpus {corpus}: {args.copies} x {info}", file=sys.stderr)
    return corpus


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=["guide", "mixed"], default="guide")
    ap.add_argument("--rows", type=int, default=170_000, help="guide rows to generate (default 170,000)")
    ap.add_argument("--copies", type=int, default=1, help="guide: write the corpus this many times in a row")
    ap.add_argument("--size-gb", type=float, default=2.5, help="mixed: corpus size in GiB (default 2.5)")
    ap.add_argument("--keep", metavar="DIR", help="write/reuse the corpus in DIR instead of a temp folder")
    ap.add_argument(
        "--repeat", type=int, default=3, help="interleaved timed runs of each tool (best is kept)"
    )
    ap.add_argument("--jobs", type=int, default=min(os.cpu_count() or 1, 8), help="for the parallel row")
    args = ap.parse_args()

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="lev-sample-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        corpus = corpus_file(root, args)
        mb = corpus.stat().st_size / 2**20
        subprocess.run(["cat", str(corpus)], stdout=subprocess.DEVNULL, check=True)  # warm the cache
        cli = [sys.executable, "-m", "cockpit.cli", "sample"]
        ours = [*cli, str(corpus), "--fraction", "0.1", "--by", "_category", "--seed", "1", "--no-progress"]
        out = {name: str(root / f"out-{i}.jsonl") for i, name in enumerate(["fast", "strict"])}
        tools = {
            "awk 'NR%10==1'": (["awk", "NR%10==1", str(corpus)], str(root / "awk.jsonl")),
            "sample --jobs 1": ([*ours, "-o", out["fast"], "--jobs", "1"], os.devnull),
            f"sample --jobs {args.jobs}": ([*ours, "-o", out["fast"], "--jobs", str(args.jobs)], os.devnull),
            "sample --strict --jobs 1": ([*ours, "-o", out["strict"], "--strict", "--jobs", "1"], os.devnull),
            "startup (sample --help)": ([*cli, "--help"], os.devnull),
        }
        runs: dict[str, list] = {name: [] for name in tools}
        load0 = os.getloadavg()[0]
        for _ in range(args.repeat):
            for name, (cmd, dst) in tools.items():
                wall, peak, rc, cpu = child_peak(cmd, dst)
                if rc:
                    print(f"{name} failed with exit code {rc}", file=sys.stderr)
                    return 1
                runs[name].append((wall, peak, cpu))
        load1 = os.getloadavg()[0]
        same = Path(out["fast"]).read_bytes() == Path(out["strict"]).read_bytes()
        print(
            f"\ncorpus: {corpus.name}, {mb / 1024:.2f} GiB, {os.cpu_count()} cores, "
            f"load average {load0:.2f} -> {load1:.2f}, best of {args.repeat} interleaved runs"
        )
        best = {
            name: (min(r[0] for r in rs), max(r[1] for r in rs), min(r[2] for r in rs))
            for name, rs in runs.items()
        }
        awk_t, _, awk_cpu = best["awk 'NR%10==1'"]
        print(f"{'tool':<28}{'wall s':>8}{'MB/s':>8}{'x awk':>7}{'CPU s':>8}{'x awk':>7}{'peak MB':>9}")
        for name, (t, peak, cpu) in best.items():
            print(
                f"{name:<28}{t:>8.2f}{mb / t:>8.0f}{t / awk_t:>7.2f}{cpu:>8.2f}{cpu / awk_cpu:>7.2f}{peak:>9.0f}"
            )
        cpu1 = best["sample --jobs 1"][2]
        print(f"\nsample's output is the same bytes as --strict's: {'yes' if same else 'NO'}")
        print(
            f"sample --jobs 1 in CPU: {cpu1 / awk_cpu:.2f}x awk, {(cpu1 - best['startup (sample --help)'][2]) / awk_cpu:.2f}x "
            f"without the start-up; target (<= 3x awk): {'met' if cpu1 <= 3 * awk_cpu else 'NOT met'}"
        )
        return 0 if same else 1
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
