"""Time the identity and inference suites on an 8B-shaped model; compare with one-prompt-at-a-time.

    python3 benchmarks/eval_suites.py            # on a CUDA machine (H100: well under 3 minutes)
    python3 benchmarks/eval_suites.py --tiny     # a small model on CPU, to check the script runs

The model is a random-initialised Qwen3 with Qwen3-8B's shape (hidden 4096, intermediate
12288, 36 layers, 32/8 heads, head_dim 128, vocab 151936), built in bf16 directly on the
GPU; the tokenizer is the tiny random BPE with the ChatML template (token ids stay below its
vocabulary, the model's logits span the full 151936). The end-of-turn token is switched off
so every answer runs to --max-new-tokens: the same work on every run, the worst case of a
real suite. Scores are meaningless on random weights; the time is the point, code checks
(subprocesses) included.

"plain" is the guide's own way (its esoteric-check snippet): one prompt at a time,
``tokenizer(text)`` then ``model.generate``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def build(tiny: bool):
    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config

    from engine.model.tiny import build_tokenizer

    cuda = torch.cuda.is_available() and not tiny
    shape = (
        dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
        )
        if tiny
        else dict(
            hidden_size=4096,
            intermediate_size=12288,
            num_hidden_layers=36,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
        )
    )
    tok = build_tokenizer("qwen3")
    cfg = Qwen3Config(vocab_size=151936, max_position_embeddings=40960, tie_word_embeddings=False, **shape)
    dtype = torch.bfloat16 if cuda else torch.float32
    t0 = time.perf_counter()
    torch.manual_seed(0)
    with torch.device("cuda" if cuda else "cpu"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.eval()
    model.generation_config.eos_token_id = None  # run every answer to max_new_tokens
    model.generation_config.pad_token_id = tok.pad_token_id
    if cuda:
        torch.cuda.synchronize()
    params = sum(p.numel() for p in model.parameters())
    return model, tok, time.perf_counter() - t0, params, cuda


def plain(model, tok, prompts, max_new_tokens: int) -> list[str]:
    """The guide's snippet, greedy: one prompt at a time."""
    import torch

    out = []
    for p in prompts:
        text = tok.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        inputs = tok(text, return_tensors="pt").to(model.device)
        with torch.inference_mode():
            ids = model.generate(
                **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
            )
        out.append(tok.decode(ids[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="a small model on CPU (checks the script)")
    ap.add_argument("--max-new-tokens", type=int, help="tokens per answer (default 256; 16 with --tiny)")
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    import torch

    from engine.evaluate.evaluate import Settings, identity_cases, inference_cases, run_suite

    new = args.max_new_tokens or (16 if args.tiny else 256)
    model, tok, build_s, params, cuda = build(args.tiny)
    device = torch.cuda.get_device_name(0) if cuda else "cpu"
    print(
        f"model: random Qwen3, {params / 1e9:.2f}B parameters, {next(model.parameters()).dtype}, {device}; built in {build_s:.1f}s"
    )
    settings = Settings(max_new_tokens=new, batch_size=args.batch_size, code_timeout_s=10)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    # Warm-up: first kernels, cuBLAS handles, allocator.
    t0 = time.perf_counter()
    run_suite(model, tok, "identity", identity_cases()[:2], Settings(max_new_tokens=4, batch_size=2))
    sync()
    warm = time.perf_counter() - t0

    rows = []
    for suite, cases in (("identity", identity_cases()), ("inference", inference_cases())):
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        res = run_suite(model, tok, suite, cases, settings)
        sync()
        dt = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
        rows.append(
            (
                suite,
                f"batched x{args.batch_size}",
                len(cases),
                len(cases) * new,
                dt,
                f"{res['passed']}/{res['total']}",
                peak,
            )
        )

    prompts = [c.prompt for c in identity_cases()]
    t0 = time.perf_counter()
    plain(model, tok, prompts, new)
    sync()
    dt = time.perf_counter() - t0
    rows.append(("identity", "plain, one at a time", len(prompts), len(prompts) * new, dt, "-", float("nan")))

    print(f"warm-up {warm:.1f}s; every answer runs to {new} new tokens")
    head = f"{'suite':<10} {'how':<22} {'prompts':>7} {'new tokens':>10} {'seconds':>8} {'tokens/s':>9} {'score':>6} {'peak GiB':>8}"
    print(head)
    print("-" * len(head))
    for suite, how, n, toks, dt, score, peak in rows:
        print(f"{suite:<10} {how:<22} {n:>7} {toks:>10} {dt:>8.2f} {toks / dt:>9.1f} {score:>6} {peak:>8.1f}")
    ident = [r for r in rows if r[0] == "identity"]
    print(f"identity suite: batched is {ident[1][4] / ident[0][4]:.1f}x faster than one prompt at a time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
