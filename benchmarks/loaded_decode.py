"""Decode speed of a model as chat loads it (engine.model.loading.load_for_inference), with and
without Liger's inference kernels, each in a fresh process (Liger patches module functions).

    python3 benchmarks/loaded_decode.py --model /tmp/base     # a saved model folder, on the GPU machine
    python3 benchmarks/loaded_decode.py --tiny                # a tiny model on CPU (no kernels there)
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


def child(model: str, new: int) -> dict:
    from generate import ours_rows

    from engine.model.loading import load_for_inference

    t0 = time.perf_counter()
    loaded = load_for_inference(model)
    load_s = time.perf_counter() - t0
    norm = type(loaded.model.model.layers[0].input_layernorm)
    rows = [list(range(100, 164))]
    runs = [ours_rows(loaded.model, rows, new) for _ in range(2)]
    return {"load_s": load_s, "norm": norm.__name__, "mode": runs[-1][4], "tok_s": [r[2] for r in runs]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--child", default=None)
    args = ap.parse_args()
    if args.tiny and not args.model:
        from engine.model.tiny import build_tiny_model

        args.model = str(build_tiny_model(Path(tempfile.mkdtemp()) / "m", arch="qwen3"))
    if args.child:
        Path(args.child).write_text(json.dumps(child(args.model, args.new)))
        return 0
    print(f"{'kernels':<8} {'load s':>7} {'1st tok/s':>10} {'again':>8}  mode, norm module")
    out = {}
    for switch in ("off", "on"):
        f = Path(tempfile.mkdtemp()) / "r.json"
        env = {**os.environ, "LEVIATHAN_INFERENCE_KERNELS": switch}
        subprocess.run([sys.executable, __file__, "--model", args.model, "--new", str(args.new), "--child", str(f)],
                       env=env, check=True)  # fmt: skip
        r = out[switch] = json.loads(f.read_text())
        print(
            f"{switch:<8} {r['load_s']:>7.1f} {r['tok_s'][0]:>10.1f} {r['tok_s'][1]:>8.1f}  {r['mode']}, {r['norm']}"
        )
    print(f"ratio on/off (again): {out['on']['tok_s'][1] / out['off']['tok_s'][1]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
