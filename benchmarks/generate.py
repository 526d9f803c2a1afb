"""Generation speed: our engine against raw transformers ``generate``, in one run, as a table.

On an 8B-shaped random Qwen3 (bf16, Qwen3-8B's shapes) with a LoRA r16 training adapter on
every linear layer, trained a few steps and saved as a checkpoint:

- raw HF ``generate`` on the merged model: eager (dynamic cache), and with
  ``cache_implementation="static"`` (transformers compiles the decode step itself; its first
  call, with the compile, is timed apart);
- ours (``engine.chat.generate.run_rows``): the merged model (CUDA-graph steps, compiled steps,
  eager steps), chat with the checkpoint beside the training adapter and with the live
  weights (``engine.chat.on_training.chat_on_training_model``, exactly the cockpit's path), compare
  (checkpoint | live in one batch), a batch of 8 suite prompts, the identity suite
  (5 prompts, 256 tokens) on the checkpoint.

Batch 1, 128 new tokens, greedy, no early stop unless the random model says EOS. tokens/s
counts tokens after the first over the time after the first (first-token latency apart);
ratios are against raw HF static cache at the same batch, in this run.

    python3 benchmarks/generate.py            # on the GPU machine
    python3 benchmarks/generate.py --tiny     # tiny shapes on CPU: checks that it runs
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from chat_memory import build_model, lora_config, train_steps  # noqa: E402
from shapes import QWEN3_8B, TINY  # noqa: E402
from triton_compiles import TritonCompiles  # noqa: E402

PROMPT = "Explain the Hermetic principle of Correspondence."


class Clock:
    """A transformers streamer that only notes when each new token arrives on the host."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._prompt = True

    def put(self, value) -> None:
        if self._prompt:
            self._prompt = False
            return
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def row(label, n, first_s, tps, seconds, batch=1, extra="") -> dict:
    return {
        "label": label,
        "batch": batch,
        "tokens": n,
        "first_token_s": first_s,
        "tokens_per_s": tps,
        "seconds": seconds,
        "note": extra,
    }


def hf_generate(model, ids, new, static: bool) -> tuple[int, float, float, float]:
    import torch

    from engine.chat.generate import hf_sampling

    clock = Clock()
    kw = {"cache_implementation": "static"} if static else {}
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new,
            min_new_tokens=new,
            **hf_sampling(),
            streamer=clock if ids.shape[0] == 1 else None,
            **kw,
        )
    seconds = time.perf_counter() - t0
    n = out.shape[1] - ids.shape[1]
    if ids.shape[0] > 1:
        return n, float("nan"), n * ids.shape[0] / seconds, seconds
    t = clock.times
    return n, t[0] - t0, (len(t) - 1) / (t[-1] - t[0]), seconds


def ours_rows(model, rows, new, mode="auto", names=None):
    from engine.chat.generate import run_rows

    res = run_rows(model, rows, max_new_tokens=new, stop_ids=set(), pad_id=0, names=names, mode=mode)
    n = len(res.tokens[0])
    span = max(t for t in res.t_last if t) - res.t_first
    tps = (n - 1) / span if len(rows) == 1 else n * len(rows) / res.seconds
    return n, res.first_token_s, tps, res.seconds, res.mode


def chat(model, tok, targets, new):
    from engine.chat.chat import Done, Request, Settings
    from engine.chat.on_training import chat_on_training_model

    events = []
    req = Request(PROMPT, targets, Settings(temperature=0, max_new_tokens=new))
    chat_on_training_model(model, tok, req, events.append, base_name="random", step=1)
    done = events[-1]
    if not isinstance(done, Done):
        raise SystemExit(f"chat failed: {done}")
    return done


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="skip HF eager, HF static at batch 8, reduce-overhead and eager steps",
    )
    args = ap.parse_args(argv)

    import torch
    from peft import PeftModel

    from engine.chat.adapters import Adapters
    from engine.chat.chat import LIVE
    from engine.chat.generate import ACTIVE, decoder_for, generate, render
    from engine.chat.on_training import capture_rng, training_untouched
    from engine.evaluate.evaluate import IDENTITY_PROMPTS
    from engine.model.model import attach_lora

    cuda = torch.cuda.is_available() and not args.tiny
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    shape = QWEN3_8B if cuda else TINY
    new = args.new_tokens if cuda else 8
    torch.manual_seed(0)
    results: list[dict] = []
    out_dir = Path(os.environ.get("OUT") or tempfile.mkdtemp())

    def add(r):
        results.append(r)
        print(json.dumps(r), flush=True)
        (out_dir / "generate.json").write_text(json.dumps(results, indent=1))

    base, tok = build_model(shape, device, dtype)
    merged_src = copy.deepcopy(base)  # the second copy: becomes the merged model
    from engine.model.attention import register

    base.config._attn_implementation = register()  # the trainer's packed attention
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    base.enable_input_require_grads()
    model = attach_lora(base, lora_config(16), gradient_checkpointing=True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-3)
    train_steps(model, opt, 2, 512 if cuda else 32, shape["vocab_size"], device)
    ckpt = Path(tempfile.mkdtemp(prefix="gen-bench-")) / "checkpoint-2"
    model.save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    merged = PeftModel.from_pretrained(merged_src, str(ckpt)).merge_and_unload().eval()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    rng = capture_rng()  # after the merge: loading an adapter draws its init from the RNG
    prompt = render(tok, PROMPT)
    ids = torch.tensor([prompt], device=device)

    if not args.quick:
        n, f, tps, s = hf_generate(merged, ids, new, static=False)
        add(row("raw HF generate, eager, dynamic cache", n, f, tps, s))
    n, f, tps, s = hf_generate(merged, ids, new, static=True)
    add(row("raw HF generate, static cache: 1st call", n, f, tps, s, extra="includes its compile"))
    n, f, tps, s = hf_generate(merged, ids, new, static=True)
    add(row("raw HF generate, static cache", n, f, tps, s))
    suite = list(IDENTITY_PROMPTS) + ["What is 2 plus 2?", "Write a haiku.", "Name three colours."]
    rows8 = [render(tok, p) for p in suite]
    width = max(len(r) for r in rows8)
    padded = torch.tensor([[0] * (width - len(r)) + r for r in rows8], device=device)
    if not args.quick:
        n, f, tps, s = hf_generate(merged, padded, new, static=False)
        add(row("raw HF generate, eager, 8 suite prompts", n, f, tps, s, batch=8, extra="tokens/s: all rows"))
    if cuda and not args.no_compile and not args.quick:
        for call in ("1st call", "again"):
            n, f, tps, s = hf_generate(merged, padded, new, static=True)
            add(row(f"raw HF generate, static cache, 8 suite prompts ({call})", n, f, tps, s, 8, "all rows"))
    # From here on the merged model is as chat loads one (load_for_inference applies these after
    # loading); they patch module functions, so only after the raw HF baselines.
    from engine.model.inference_kernels import apply_inference_kernels
    from engine.model.siblings import relayout

    relayout(merged)
    kernels = apply_inference_kernels(merged)
    n, f, tps, s, used = ours_rows(merged, rows8, new)
    n, f, tps, s, used = ours_rows(merged, rows8, new)
    add(row("ours: 8 suite prompts, merged model", n, f, tps, s, 8, f"all rows, {used}"))

    compiled = [] if args.no_compile or not cuda else ["compile-graph", "compile"][: 1 if args.quick else 2]
    for mode in ["graph", *compiled, *([] if args.quick else ["eager"])]:
        for call in ("1st call", "again"):
            n, f, tps, s, used = ours_rows(merged, [prompt], new, mode=mode)
            add(row(f"ours: merged model, {mode} steps ({call})", n, f, tps, s, extra=used))
    from engine.chat.generate import release

    release(merged)

    # Liger's kernels as the trainer applies them (they patch transformers' module functions
    # for every model in the process, so only after the raw HF baselines).
    liger = "no"
    if cuda:
        try:
            from liger_kernel.transformers import _apply_liger_kernel_to_instance

            _apply_liger_kernel_to_instance(model=base)
            liger = "yes"
        except Exception as e:  # not installed here: the numbers say so
            liger = f"no ({type(e).__name__})"

    def chats(mode):
        os.environ["LEVIATHAN_DECODE_MODE"] = mode
        for label, targets in (
            ("ours: chat, checkpoint beside training adapter", [str(ckpt)]),
            ("ours: chat, live training weights", [LIVE]),
            ("ours: compare, checkpoint | live (one batch)", [str(ckpt), LIVE]),
        ):
            for call in ("1st call", "again"):
                done = chat(model, tok, targets, new)
                a = done.answers[0]
                lab = f"{label}, {mode} ({call})"
                add(row(lab, a.tokens, a.first_token_s, a.tokens_per_s, done.seconds, len(targets)))
        os.environ.pop("LEVIATHAN_DECODE_MODE", None)

    chats("graph")

    # Suites: 8 prompts in one batch (live weights), and the identity suite on the checkpoint.
    with training_untouched(model):
        for call in ("1st call", "again"):
            n, f, tps, s, used = ours_rows(model, rows8, new, names=[ACTIVE] * 8)
            add(row(f"ours: 8 suite prompts, live weights ({call})", n, f, tps, s, 8, "tokens/s: all rows"))
        adapters = Adapters(model, "random", live=model.active_adapter, keep=0)
        (name,) = adapters.names([str(ckpt)])
        for call in ("1st call", "again"):
            t0 = time.perf_counter()
            with TritonCompiles() as built:
                generate(
                    model, tok, list(IDENTITY_PROMPTS), max_new_tokens=2 * new, batch_size=8, target=name
                )
            s = time.perf_counter() - t0
            phases = ", ".join(f"{k} {v:.2f}s" for k, v in decoder_for(model).phases.items())
            phases = "; ".join(filter(None, [phases, built.summary()]))
            add(
                row(
                    f"ours: identity suite, 5 x {2 * new} tokens, checkpoint ({call})",
                    2 * new,
                    None,
                    None,
                    s,
                    5,
                    phases,
                )
            )
        from engine.chat.generate import release

        release(model)
        adapters.trim(0)

    for mode in compiled[:1]:  # last: its compiles take the longest
        chats(mode)

    same = all(torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)
    rng_now = capture_rng()
    same_rng = torch.equal(rng_now["torch"], rng["torch"]) and all(
        torch.equal(a, b) for a, b in zip(rng.get("cuda", []), rng_now.get("cuda", []), strict=True)
    )
    loss = train_steps(model, opt, 1, 512 if cuda else 32, shape["vocab_size"], device)[0]

    static = {r["batch"]: r["tokens_per_s"] for r in results if r["label"] == "raw HF generate, static cache"}
    dev = torch.cuda.get_device_name(0) if cuda else "cpu"
    print(
        f"\ngeneration on {dev}: {'8B-shaped' if cuda else 'tiny'} Qwen3, {dtype}, {new} new tokens, greedy"
    )
    print(f"{'path':<62} {'batch':>5} {'1st tok s':>9} {'tok/s':>8} {'x HF static':>11} {'total s':>8}")
    for r in results:
        ref = static.get(r["batch"]) if r["batch"] == 1 else None
        ratio = f"{r['tokens_per_s'] / ref:.2f}x" if ref and r["tokens_per_s"] else ""
        first = (
            f"{r['first_token_s']:.3f}"
            if r["first_token_s"] == r["first_token_s"] and r["first_token_s"]
            else ""
        )
        tps = f"{r['tokens_per_s']:.1f}" if r["tokens_per_s"] else ""
        print(
            f"{r['label']:<62} {r['batch']:>5} {first:>9} {tps:>8} {ratio:>11} {r['seconds']:>8.2f}  {r['note']}"
        )
    print(f"training model: attention {base.config._attn_implementation}, Liger kernels {liger}")
    print(f"merged model: inference kernels {'on' if kernels else 'off'} (as load_for_inference)")
    print(
        f"training adapter unchanged: {same}; RNG unchanged: {same_rng}; training continues: loss {loss:.3f}"
    )
    return 0 if same and same_rng else 1


if __name__ == "__main__":
    sys.exit(main())
