"""export gguf on an 8B-shaped model: time and size per type, and what the checks cost.

    python3 benchmarks/export_gguf.py             # on the GPU machine (64 GB disk): minutes
    python3 benchmarks/export_gguf.py --tiny      # a tiny model, on CPU

Builds the random Qwen3 of benchmarks/export_gpu.py (8B shape, bf16, ~16 GB) and runs the engine's
``export_gguf`` (what `leviathan-cockpit export gguf` calls) for each ``--quant`` type. The plain
alternative is llama.cpp's converter alone, which is the first phase of each export: the table gives
its time, the tensor check's time, and their ratio (what verifying every tensor costs). With
llama-cpp-python installed, q4_k_m is added to the default types and every file also goes through
llama.cpp's runtime check (its time: the first file's includes loading the merged model in float32;
its logits against the merged model and identity answers are in the table). Every number is
printed as soon as it is measured; ``--json FILE`` keeps them. Needs the [gguf] extra.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_gpu import SHAPE_8B, SHAPE_TINY, build_base, folder_bytes, gib, row, say  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--quant", nargs="+", help="default: f16 q8_0, and q4_k_m with llama-cpp-python")
    ap.add_argument("--work", help="scratch folder (default: a temporary one, removed)")
    ap.add_argument("--json", help="write the measurements here")
    args = ap.parse_args()
    import torch

    from engine.ship import gguf_runtime
    from engine.ship.gguf import export_gguf

    quants = args.quant or ["f16", "q8_0"] + (["q4_k_m"] if gguf_runtime.available() else [])

    work = Path(args.work or tempfile.mkdtemp(prefix="gguf-bench-"))
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    model, _, base = build_base(work, SHAPE_TINY if args.tiny else SHAPE_8B, device)
    del model
    torch.cuda.empty_cache() if device == "cuda" else None
    results = []
    try:
        for q in quants:  # one export per type, each file removed after: peak disk ~16 GB + one file
            t = time.time()
            r = export_gguf(base, work / "gguf", quants=[q], force=True, progress=lambda f, m: say(m))
            f = r.files[0]
            convert_s = f.seconds - f.check_seconds - f.runtime_seconds
            results.append(
                {
                    "quant": q,
                    "bytes": f.size_bytes,
                    "convert_s": convert_s,
                    "check_s": f.check_seconds,
                    "runtime_s": f.runtime_seconds,
                    "export_s": time.time() - t,
                    "check": f.check.record(),
                    "runtime": f.runtime.record() if f.runtime else None,
                }
            )
            row(
                f"gguf {q}",
                f"{gib(f.size_bytes)}; converter {convert_s:.0f}s + check {f.check_seconds:.0f}s + llama.cpp "
                f"{f.runtime_seconds:.0f}s = {f.seconds / max(convert_s, 1e-9):.2f}x the converter alone",
                f.check.summary() + (f"; {f.runtime.summary()}" if f.runtime else ""),
            )
            f.path.unlink()
    finally:
        source = folder_bytes(base)
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nsource: {gib(source)} of bf16 safetensors on {device}")
    print(
        "| type | size | converter (plain) | + tensor check | + llama.cpp check | ratio | largest error by storage "
        "type | llama.cpp vs merged: max / mean diff, top-1 | identity answers equal |"
    )
    print("|---|---:|---:|---:|---:|---:|---|---|---:|")
    for r in results:
        errs = ", ".join(f"{t} {v['max_abs_err']:.1e}" for t, v in sorted(r["check"]["by_type"].items()))
        ratio = (r["convert_s"] + r["check_s"] + r["runtime_s"]) / max(r["convert_s"], 1e-9)
        run = r["runtime"]
        logits = f"{run['max_diff']:.1e} / {run['mean_diff']:.1e}, {run['top1']:.0%}" if run else "not run"
        answers = f"{sum(a['same'] for a in run['answers'])}/{len(run['answers'])}" if run else "-"
        print(
            f"| {r['quant']} | {gib(r['bytes'])} | {r['convert_s']:.1f} s | {r['check_s']:.1f} s | "
            f"{r['runtime_s']:.1f} s | {ratio:.2f}x | {errs} | {logits} | {answers} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
