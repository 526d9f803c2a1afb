"""What a compiled decode step costs at its first call, in a fresh process and in the next one.

    python3 benchmarks/compile_cache.py          # on the GPU machine (~90 s)
    python3 benchmarks/compile_cache.py --tiny   # a CPU smoke run

Two processes in turn, one shared Inductor cache folder (a fresh temporary one, so the first
process starts cold): each builds the 8B-shaped Qwen3 (bf16, random), then answers one prompt
with the engine's ``compile-graph`` steps twice and with ``graph`` steps once. The first
process's first call pays Dynamo's trace, Inductor's compile and the capture; the second
process's first call shows what torch's on-disk caches (FX graph, AOTAutograd) save when the
same shape was compiled before, as a chat started after a training run's probes would find it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def child(tiny: bool) -> dict:
    import torch
    from shapes import qwen3_config
    from transformers import AutoModelForCausalLM

    from engine.chat.generate import release, run_rows

    cuda = torch.cuda.is_available()
    with torch.device("cuda" if cuda else "cpu"):
        model = AutoModelForCausalLM.from_config(
            qwen3_config(tiny or not cuda), dtype=torch.bfloat16 if cuda else torch.float32
        ).eval()
    rows, out = [list(range(100, 140))], {}
    for label, mode in (("compile-graph 1st", "compile-graph"), ("compile-graph again", "compile-graph"),
                        ("graph", "graph")):  # fmt: skip
        t0 = time.perf_counter()
        res = run_rows(model, rows, max_new_tokens=32, stop_ids=set(), pad_id=0, mode=mode)
        out[label] = {"seconds": time.perf_counter() - t0, "mode": res.mode, "notes": res.notes}
    release(model)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--child", default=None)
    args = ap.parse_args()
    if args.child:
        Path(args.child).write_text(json.dumps(child(args.tiny)))
        return 0
    cache = tempfile.mkdtemp(prefix="inductor-")
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
    runs = []
    for i in (1, 2):
        out = Path(cache) / f"run{i}.json"
        cmd = [sys.executable, __file__, "--child", str(out)] + (["--tiny"] if args.tiny else [])
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, check=True)
        runs.append((time.perf_counter() - t0, json.loads(out.read_text())))
    print(f"{'process':<10} {'call':<22} {'seconds':>8}  mode")
    for i, (wall, res) in enumerate(runs, 1):
        for label, r in res.items():
            print(f"{i:<10} {label:<22} {r['seconds']:>8.2f}  {r['mode']} {'; '.join(r['notes'])}")
        print(f"{i:<10} {'(whole process)':<22} {wall:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
