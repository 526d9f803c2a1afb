"""QLoRA decode: the identity suite as a probe runs it, on the 4-bit base's bf16 copy, in 4-bit,
through PEFT's ``generate``, and on a bf16 model, in one run, as a table.

    python3 benchmarks/qlora_decode.py --base /tmp/base   # a saved bf16 model (throughput.py's 8B;
                                                          # made there, Qwen3-8B-shaped, if absent)
    python3 benchmarks/qlora_decode.py --tiny             # tiny random Qwen3 on CPU: checks that it runs
    python3 benchmarks/qlora_decode.py --vl               # an 8B-shaped Qwen3-VL (the guide's base)

The base is loaded 4-bit with the trainer's own settings (``engine.model.model.quantization_config``:
NF4, double quantization, bf16 compute) and given a random LoRA (r 16, all linear, B not zero);
the bf16 reference is the same base unquantized with the same LoRA weights. The batch is the
identity suite's (its 5 prompts, the probes' default 256 new tokens, one batch of up to 8), no
early stop, greedy. Paths:

- ``engine, bf16 copy``: ``run_rows`` (what the probes call) with ``LEVIATHAN_DECODE_BASE_COPY``
  at its default (on the GPU: a bf16 copy where memory allows; its note says what happened);
- ``engine, 4-bit``: the same with the copy off (bitsandbytes' 4-bit product in each step);
- ``PEFT generate``: ``model.generate`` on the 4-bit model (the path QLoRA probes once took),
  measured on ``--hf-new-tokens`` tokens (it is slow) and scaled to the suite's length (``~``);
- ``engine, bf16 model``: the reference the issue sets (the identity suite under 3 s on bf16).

``suite s`` is a probe's cost: from a released engine (no copy, no graphs: each probe suite
starts so) to the answers and the engine released again, so the copy's dequantization and the
graph captures are in it. ``warm`` is the same call again with the engine kept (the decode rate).
Each engine path runs a 4-token call first (kernels loaded, cuBLAS set up) that is not in the
suite's time; its seconds and the Triton kernels it built are printed (``process_first_4_tokens_s``).
Tokens: the engine's two 4-bit-base paths must give the same greedy tokens (rows equal); PEFT's
agreement with the copy path is its common prefix (its LoRA layer rounds the adapter's product
to bf16 before adding it, so a late token may differ).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402


def make_base(path: str) -> None:
    """A random Qwen3-8B-shaped bf16 model with a tokenizer, saved at ``path`` (as throughput.py's)."""
    from chat_memory import build_model
    from shapes import QWEN3_8B

    t0 = time.perf_counter()
    model, tokenizer = build_model(QWEN3_8B, "cuda", torch.bfloat16)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    del model
    torch.cuda.empty_cache()
    print(f"made the 8B-shaped base at {path} in {time.perf_counter() - t0:.0f}s", flush=True)


def load(base: str, four_bit: bool, device: str):
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    from engine.chat.base_copy import four_bit_layers
    from engine.model.model import is_vision_language, load_model_config, quantization_config

    kw = dict(dtype=torch.bfloat16, local_files_only=True)
    if four_bit:
        kw.update(quantization_config=quantization_config(4), device_map={"": device})
    vl = is_vision_language(load_model_config(base))
    model = (AutoModelForImageTextToText if vl else AutoModelForCausalLM).from_pretrained(base, **kw)
    if not four_bit:
        model.to(device)
    for m in four_bit_layers(model):
        # On CPU, bitsandbytes repacks 4-bit weights for its AVX512 kernel at the first eval
        # forward (after which no copy can be made); off, they keep the layout they have on a GPU.
        m.support_avx512bf16_for_cpu = False
    from engine.model.inference_kernels import apply_inference_kernels

    apply_inference_kernels(model)  # as the training model (and load_for_inference) has them
    return model


def with_lora(model, weights: dict | None = None):
    """A random LoRA (seeded, B not zero), or the LoRA ``weights`` of another model by name."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(model, lora)
    for n, p in model.named_parameters():
        if "lora_" in n:
            p.data.copy_(weights[n]) if weights is not None else p.data.mul_(3.0)
    return model.eval()


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def engine(model, rows, new: int, pad: int, copy: str) -> dict:
    """The suite as a probe runs it (from a released engine to released), then warm."""
    from triton_compiles import TritonCompiles

    from engine.chat.base_copy import ENV
    from engine.chat.generate import release, run_rows

    os.environ[ENV] = copy
    release(model)
    sync()
    t0 = time.perf_counter()
    with TritonCompiles() as first_built:
        run_rows(model, rows, max_new_tokens=4, stop_ids=set(), pad_id=pad)
    sync()
    first_call = time.perf_counter() - t0
    release(model)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    sync()
    t0 = time.perf_counter()
    with TritonCompiles() as built:
        res = run_rows(model, rows, max_new_tokens=new, stop_ids=set(), pad_id=pad)
    sync()
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    warm = run_rows(model, rows, max_new_tokens=new, stop_ids=set(), pad_id=pad)
    sync()
    warm_s = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    t0 = time.perf_counter()
    release(model)
    sync()
    cold += time.perf_counter() - t0
    same = warm.tokens == res.tokens
    return dict(
        suite_s=cold,
        warm_s=warm_s,
        tokens=res.tokens,
        warm_same=same,
        mode=res.mode,
        notes=res.notes,
        first_token_s=res.first_token_s,
        first_call_s=first_call,
        first_call_triton=first_built.summary(),
        cold_triton=built.summary(),
        phases={k: round(v, 3) for k, v in res.phases.items()},
        peak_gib=peak,
    )


def find_sync(model, rows, pad: int) -> str | None:
    """Where a decode step syncs with the host (what makes a CUDA graph capture fail): one eager
    call whose decode steps (not the prefill) run under ``set_sync_debug_mode("error")``."""
    import traceback

    from engine.chat.decode import Decoder
    from engine.chat.generate import _route_names
    from engine.chat.routing import Route

    if not torch.cuda.is_available():
        return None
    d = Decoder(model, mode="eager")
    forward, calls = d._forward, [0]

    def watched(*a, **kw):
        calls[0] += 1
        if calls[0] == 1:
            return forward(*a, **kw)
        torch.cuda.set_sync_debug_mode("error")
        try:
            return forward(*a, **kw)
        finally:
            torch.cuda.set_sync_debug_mode(0)

    d._forward = watched
    routed = _route_names(model, [None] * len(rows))
    names = [model.active_adapter] * len(rows) if routed is not None else None
    try:
        d.run(
            rows, max_new_tokens=3, stop_ids=set(), pad_id=pad, route=Route(model, names) if names else None
        )
        return None
    except Exception as e:
        frames = [f for f in traceback.extract_tb(e.__traceback__) if "/torch/" not in f.filename][-6:]
        return f"{type(e).__name__}: {str(e)[:200]} at " + " <- ".join(
            f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames)
        )
    finally:
        d.release()


def peft_generate(model, rows, new: int, pad: int, device: str) -> dict:
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
    starts = torch.tensor([width - len(r) for r in rows], device=device)
    mask = (torch.arange(width, device=device)[None] >= starts[:, None]).long()
    kw = dict(
        attention_mask=mask, do_sample=False, temperature=None, top_p=None, top_k=None, pad_token_id=pad
    )
    with torch.no_grad():
        model.generate(input_ids=ids, max_new_tokens=4, min_new_tokens=4, **kw)
        sync()
        t0 = time.perf_counter()
        out = model.generate(input_ids=ids, max_new_tokens=new, min_new_tokens=new, **kw)
        sync()
    return dict(seconds=time.perf_counter() - t0, tokens=out[:, width:].tolist())


def prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--base", default=None, help="a saved bf16 model with its tokenizer (8B: throughput.py's)"
    )
    ap.add_argument("--tiny", action="store_true", help="a tiny random Qwen3 on CPU (a smoke run)")
    ap.add_argument("--vl", action="store_true", help="a Qwen3-VL base (the guide's), built by engine_8b")
    ap.add_argument("--new-tokens", type=int, default=256, help="the probes' default max_new_tokens")
    ap.add_argument("--hf-new-tokens", type=int, default=32, help="PEFT generate's measured tokens")
    args = ap.parse_args()
    from engine.chat.generate import render
    from engine.evaluate.evaluate import IDENTITY_PROMPTS, Settings
    from engine.model.model import load_tokenizer
    from engine.model.tiny import build_tiny_model

    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    if args.base is None and not args.tiny and not args.vl:
        ap.error("--base PATH (a saved bf16 model), --vl or --tiny")
    if args.vl:  # engine_8b's random Qwen3-VL: 8B-shaped on the GPU, tiny with --tiny
        from engine_8b import build

        base = str(build(Path(tempfile.mkdtemp()), tiny=args.tiny, vl=True))
    elif args.base is not None and not Path(args.base, "config.json").exists():
        make_base(args.base)
    if not args.vl:
        base = args.base or str(build_tiny_model(Path(tempfile.mkdtemp()) / "qwen3", arch="qwen3"))
    tok = load_tokenizer(base)
    rows = [render(tok, p) for p in IDENTITY_PROMPTS][: Settings().batch_size]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    new, hf_new = args.new_tokens, min(args.hf_new_tokens, args.new_tokens)
    copy_default = "auto" if device == "cuda" else "on"
    t0 = time.perf_counter()
    q = with_lora(load(base, True, device))
    print(
        f"device: {torch.cuda.get_device_name(0) if device == 'cuda' else 'cpu'}  4-bit load {time.perf_counter() - t0:.1f}s",
        flush=True,
    )
    res = {
        "engine, bf16 copy": engine(q, rows, new, pad, copy_default),
        "engine, 4-bit": engine(q, rows, new, pad, "off"),
    }
    if any(r["mode"] != "graph" for r in res.values()) and device == "cuda":
        print(f"a decode step syncs: {find_sync(q, rows, pad)}", flush=True)
    hf = peft_generate(q, rows, hf_new, pad, device)
    lora = {n: p.detach().clone() for n, p in q.named_parameters() if "lora_" in n}
    del q
    if device == "cuda":
        torch.cuda.empty_cache()
    ref = with_lora(load(base, False, device), lora)
    res["engine, bf16 model"] = engine(ref, rows, new, pad, copy_default)
    del ref
    report(res, hf, rows, new, hf_new)
    return 0


def report(res: dict, hf: dict, rows, new: int, hf_new: int) -> None:
    n = len(rows)
    copy = res["engine, bf16 copy"]
    bf16 = res["engine, bf16 model"]["suite_s"]
    hf_suite = hf["seconds"] * new / hf_new
    for name, r in res.items():
        same = sum(a == b for a, b in zip(r["tokens"], copy["tokens"], strict=True))
        same = f"{same}/{n}" if name != "engine, bf16 model" else None  # other weights: other tokens
        print(
            json.dumps(
                {
                    "path": name,
                    "rows": n,
                    "new_tokens": new,
                    "suite_s": round(r["suite_s"], 3),
                    "warm_s": round(r["warm_s"], 3),
                    "warm_tok_s": round(n * new / r["warm_s"], 1),
                    "mode": r["mode"],
                    "notes": r["notes"],
                    "cold_first_token_s": round(r["first_token_s"], 3),
                    "process_first_4_tokens_s": round(r["first_call_s"], 3),
                    "first_call_triton": r["first_call_triton"],
                    "cold_triton": r["cold_triton"],
                    "cold_one_off_s": r["phases"],
                    "peak_gib": round(r["peak_gib"], 2) if r["peak_gib"] else None,
                    "rows_equal_to_copy_path": same,
                    "warm_call_same_tokens": r["warm_same"],
                }
            ),
            flush=True,
        )
    agree = [prefix(a, b[:hf_new]) for a, b in zip(hf["tokens"], copy["tokens"], strict=True)]
    print(
        json.dumps(
            {
                "path": "PEFT generate",
                "rows": n,
                "new_tokens": hf_new,
                "seconds": round(hf["seconds"], 3),
                "tok_s": round(n * hf_new / hf["seconds"], 1),
                "common_prefix_with_copy_path": agree,
            }
        ),
        flush=True,
    )
    print(f"\nidentity suite: {n} rows x {new} new tokens, greedy, no early stop")
    print("(time / bf16 model's: 1.00x is bf16 speed; PEFT's time / this path's: the speed-up over PEFT)")
    print(f"{'path':<22}{'suite s':>10}{'/ bf16':>9}{'PEFT /':>9}{'warm tok/s':>12}{'peak GiB':>10}")
    for name, r in res.items():
        peak = f"{r['peak_gib']:.1f}" if r["peak_gib"] else "-"
        print(
            f"{name:<22}{r['suite_s']:>10.2f}{r['suite_s'] / bf16:>8.2f}x{hf_suite / r['suite_s']:>8.2f}x"
            f"{n * new / r['warm_s']:>12.1f}{peak:>10}"
        )
    print(
        f"{'PEFT generate':<22}{'~' + format(hf_suite, '.2f'):>10}{hf_suite / bf16:>8.2f}x{1:>8.2f}x{n * hf_new / hf['seconds']:>12.1f}{'-':>10}"
    )
    same = sum(a == b for a, b in zip(res["engine, 4-bit"]["tokens"], copy["tokens"], strict=True))
    print(
        f"tokens: engine 4-bit = engine bf16 copy on {same}/{n} rows; PEFT generate's common prefix with the"
        f" copy path: {agree} of {hf_new}"
    )
    print(f"copy path: {'; '.join(copy['notes'])}")


if __name__ == "__main__":
    raise SystemExit(main())
