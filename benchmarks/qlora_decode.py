"""QLoRA decode through the engine: the same greedy tokens as PEFT's ``model.generate``, and the time.

    python3 benchmarks/qlora_decode.py --base /tmp/base     # a saved bf16 model (throughput.py's 8B)
    python3 benchmarks/qlora_decode.py                      # a tiny random Qwen3 (CUDA still needed)

Loads the base in 4-bit (NF4, bf16 compute, as the trainer does), puts a random LoRA (r 16, all
linear, B not zero) on it, and answers the identity suite's prompts greedily in one batch: PEFT's
``model.generate`` (the path QLoRA chat and probes took, the engine's routing once refused
bitsandbytes layers) against ``engine.chat.generate.run_rows`` (the engine: static cache, CUDA
graphs). Prints one JSON line per path: tokens, seconds, tokens/s, the mode the engine used,
and whether the tokens match.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default=None)
    ap.add_argument("--new-tokens", type=int, default=64)
    args = ap.parse_args()
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from engine.chat.generate import release, render, run_rows
    from engine.evaluate.evaluate import IDENTITY_PROMPTS
    from engine.model.tiny import build_tiny_model

    base = args.base or str(build_tiny_model(Path(tempfile.mkdtemp()) / "qwen3", arch="qwen3"))
    q = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_use_double_quant=True,
    )
    model = AutoModelForCausalLM.from_pretrained(
        base, quantization_config=q, dtype=torch.bfloat16, device_map="cuda"
    )
    torch.manual_seed(0)
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(model, lora).eval()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    rows = [render(tok, p) for p in IDENTITY_PROMPTS]
    width = max(len(r) for r in rows)
    pad = tok.pad_token_id or 0
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device="cuda")
    mask = (
        torch.arange(width, device="cuda")[None]
        >= torch.tensor([width - len(r) for r in rows], device="cuda")[:, None]
    ).long()
    n = args.new_tokens
    out = {}
    for call in ("1st call", "again"):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad():
            got = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=pad,
            )
        torch.cuda.synchronize()
        s = time.perf_counter() - t0
        out["hf"] = got[:, width:].tolist()
        print(
            json.dumps(
                {
                    "path": f"PEFT model.generate ({call})",
                    "rows": len(rows),
                    "seconds": round(s, 3),
                    "tok_s": round(len(rows) * n / s, 1),
                }
            ),
            flush=True,
        )
    for call in ("1st call", "again"):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        res = run_rows(model, rows, max_new_tokens=n, stop_ids=set(), pad_id=pad)
        torch.cuda.synchronize()
        s = time.perf_counter() - t0
        same = sum(a == b for a, b in zip(res.tokens, out["hf"], strict=True))
        print(
            json.dumps(
                {
                    "path": f"engine run_rows ({call})",
                    "rows": len(rows),
                    "seconds": round(s, 3),
                    "tok_s": round(len(rows) * n / s, 1),
                    "mode": res.mode,
                    "notes": res.notes,
                    "rows_equal_to_hf": f"{same}/{len(rows)}",
                }
            ),
            flush=True,
        )
    release(model)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
