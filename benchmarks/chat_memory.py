"""What a chat during training costs on the GPU: memory, first-token latency, tokens/s.

Builds an 8B-shaped random Qwen3 (Qwen3-8B's shapes: hidden 4096, intermediate 12288,
36 layers, 32 heads, 8 KV heads, head_dim 128, vocab 151936) directly on the GPU in bf16,
attaches the run's LoRA r16 training adapter on every linear layer, trains a few steps,
saves the adapter as a checkpoint, then chats the way the cockpit does during training
(``engine.chat.on_training.chat_on_training_model``: the checkpoint loaded beside the training adapter
on the same base, deleted afterwards) and checks that training state is untouched.

For comparison, in the same run: the plain alternative, a second copy of the base with the
checkpoint on it (what a separate chat process would hold).

    python3 benchmarks/chat_memory.py            # on a GPU, under 3 minutes on an H100
    python3 benchmarks/chat_memory.py --tiny     # a tiny config on CPU: checks it runs
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shapes import QWEN3_8B as EIGHT_B  # noqa: E402
from shapes import TINY  # noqa: E402

GIB = 1024**3
MIB = 1024**2


def mem(device) -> tuple[int, int]:
    import torch

    if device.type != "cuda":
        return 0, 0
    torch.cuda.synchronize()
    return torch.cuda.memory_allocated(), torch.cuda.max_memory_allocated()


def reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def build_model(shape: dict, device, dtype):
    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config

    from engine.model.tiny import build_tokenizer

    tokenizer = build_tokenizer("qwen3")
    config = Qwen3Config(
        **{**shape, "max_position_embeddings": 4096},
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        attn_implementation="sdpa",
    )
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def lora_config(r: int):
    from engine.config.config import RunConfig

    return RunConfig.model_validate(
        {"base_model": "random", "datasets": [{"path": "none.jsonl"}], "lora_r": r, "lora_alpha": 2 * r}
    )


def train_steps(model, optimizer, steps: int, seq: int, vocab: int, device) -> list[float]:
    import torch

    model.train()
    losses = []
    for _ in range(steps):
        ids = torch.randint(0, vocab, (1, seq), device=device)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def chat_once(model, tokenizer, targets, base_name, new_tokens, step=None):
    from engine.chat.chat import Done, Failed, Request, Settings
    from engine.chat.on_training import chat_on_training_model

    events = []
    request = Request(
        "Explain the Hermetic principle of Correspondence.",
        targets,
        Settings(temperature=0, max_new_tokens=new_tokens),
    )
    chat_on_training_model(model, tokenizer, request, events.append, base_name=base_name, step=step)
    end = events[-1]
    if isinstance(end, Failed):
        raise SystemExit(f"chat failed: {end.message}")
    assert isinstance(end, Done)
    prompt_tokens = len(tokenizer.apply_chat_template(request.messages(), add_generation_prompt=True))
    return end, prompt_tokens


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny shapes on CPU (a check that the script runs)")
    ap.add_argument("--steps", type=int, default=3, help="training steps before and after the chat")
    ap.add_argument("--seq", type=int, default=1024, help="training sequence length")
    ap.add_argument("--new-tokens", type=int, default=128, help="answer length (greedy, no early stop)")
    ap.add_argument("--no-plain", action="store_true", help="skip the second-copy comparison")
    args = ap.parse_args(argv)

    import numpy as np
    import torch
    from peft import PeftModel

    from engine.chat.chat import LIVE
    from engine.chat.on_training import capture_rng
    from engine.model.model import attach_lora

    if not args.tiny and not torch.cuda.is_available():
        print("no CUDA GPU here: run on the GPU machine, or pass --tiny for the CPU check", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    shape = TINY if args.tiny else EIGHT_B
    seq = min(args.seq, 64) if args.tiny else args.seq
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    rows: list[tuple[str, str]] = []
    t_start = time.perf_counter()

    t0 = time.perf_counter()
    model, tokenizer = build_model(shape, device, dtype)
    base_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    rows.append(
        ("base model (random init on device)", f"{base_bytes / GIB:.2f} GiB, {time.perf_counter() - t0:.1f}s")
    )
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model = attach_lora(model, lora_config(16), gradient_checkpointing=True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    adapter_bytes = sum(p.numel() * p.element_size() for p in trainable)
    rows.append(
        (
            "LoRA r16 adapter (all linear)",
            f"{sum(p.numel() for p in trainable) / 1e6:.1f}M params, {adapter_bytes / MIB:.0f} MiB",
        )
    )
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)

    t0 = time.perf_counter()
    losses = train_steps(model, optimizer, args.steps, seq, shape["vocab_size"], device)
    rows.append(
        (
            f"{args.steps} training steps (1 x {seq} tokens)",
            f"{time.perf_counter() - t0:.1f}s, loss {losses[-1]:.3f}",
        )
    )
    alloc_train, peak_train = mem(device)
    rows.append(("training: allocated / peak", f"{alloc_train / GIB:.2f} / {peak_train / GIB:.2f} GiB"))

    ckpt_dir = Path(tempfile.mkdtemp(prefix="chat-bench-")) / "checkpoint-3"
    model.save_pretrained(ckpt_dir)
    tokenizer.save_pretrained(ckpt_dir)
    file_bytes = sum(f.stat().st_size for f in ckpt_dir.glob("adapter_model*"))
    rows.append(("checkpoint adapter file", f"{file_bytes / MIB:.0f} MiB"))

    # State the chat must not touch.
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt_state = {
        k: {s: v.clone() for s, v in st.items()} for k, st in optimizer.state_dict()["state"].items()
    }
    rng = capture_rng()

    kv_per_token = (
        2
        * shape["num_hidden_layers"]
        * shape["num_key_value_heads"]
        * shape["head_dim"]
        * (2 if dtype == torch.bfloat16 else 4)
    )
    results = []
    for label, targets in (
        ("chat: checkpoint beside training adapter", [str(ckpt_dir)]),
        ("chat: live weights", [LIVE]),
        ("compare: checkpoint | live (one batch)", [str(ckpt_dir), LIVE]),
    ):
        gc.collect()
        before, _ = mem(device)
        reset_peak(device)
        done, prompt_tokens = chat_once(model, tokenizer, targets, "random", args.new_tokens, step=args.steps)
        after, peak = mem(device)
        kv = kv_per_token * (prompt_tokens + args.new_tokens) * len(targets)
        a = done.answers[0]
        results.append(
            (
                label,
                before,
                peak,
                after,
                kv,
                a.first_token_s,
                a.tokens_per_s,
                a.tokens,
                prompt_tokens,
                done.seconds,
            )
        )

    # Training state after the chats: bit-identical.
    same_weights = all(torch.equal(p, weights[n]) for n, p in model.named_parameters() if n in weights)
    same_flags = [n for n, p in model.named_parameters() if p.requires_grad] == list(weights)
    now = optimizer.state_dict()["state"]
    same_opt = all(torch.equal(now[k][s], v) for k, st in opt_state.items() for s, v in st.items())
    rng_now = capture_rng()
    same_rng = torch.equal(rng_now["torch"], rng["torch"]) and rng_now["python"] == rng["python"]
    if "cuda" in rng:
        same_rng = same_rng and all(
            torch.equal(a, b) for a, b in zip(rng["cuda"], rng_now["cuda"], strict=True)
        )
    no_leftover = all("chat_" not in n for n, _ in model.named_parameters())
    more = train_steps(model, optimizer, 1, seq, shape["vocab_size"], device)

    # The plain alternative: a second copy of the base holding the checkpoint.
    plain = None
    if not args.no_plain:
        gc.collect()
        before, _ = mem(device)
        reset_peak(device)
        t0 = time.perf_counter()
        second, _ = build_model(shape, device, dtype)
        second = PeftModel.from_pretrained(second, str(ckpt_dir))
        second.eval()
        load_s = time.perf_counter() - t0
        from engine.chat.chat import Request, Settings, generate

        events = []
        request = Request(
            "Explain the Hermetic principle of Correspondence.", ["ckpt"], Settings(0, 0.9, args.new_tokens)
        )
        (answer,) = generate(second, tokenizer, request, None, events.append)
        after, peak = mem(device)
        plain = (before, peak, after, answer, load_s)
        del second
        gc.collect()

    # -- report ----------------------------------------------------------------------------
    dev = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    print(
        f"\nchat during training on {dev}: {'tiny' if args.tiny else '8B-shaped'} Qwen3, bf16={dtype == torch.bfloat16}"
    )
    for k, v in rows:
        print(f"  {k:<44} {v}")
    print(
        f"  {'KV cache per token (bf16)' if dtype == torch.bfloat16 else 'KV cache per token':<44} {kv_per_token / 1024:.0f} KiB"
    )
    print()
    head = f"  {'':<44} {'before':>9} {'peak':>9} {'after':>9} {'extra':>9} {'adapter+KV':>11} {'1st tok':>8} {'tok/s':>7} {'tokens':>6}"
    print(head)
    for label, before, peak, after, kv, first, tps, ntok, _, _ in results:
        extra_adapter = file_bytes if "checkpoint" in label else 0
        print(
            f"  {label:<44} {before / GIB:>8.2f}G {peak / GIB:>8.2f}G {after / GIB:>8.2f}G "
            f"{(peak - before) / MIB:>8.0f}M {(extra_adapter + kv) / MIB:>10.0f}M "
            f"{(first or 0):>7.3f}s {(tps or 0):>7.1f} {ntok:>6}"
        )
    if plain:
        before, peak, after, answer, load_s = plain
        print(
            f"  {'plain: second base copy + checkpoint':<44} {before / GIB:>8.2f}G {peak / GIB:>8.2f}G {after / GIB:>8.2f}G "
            f"{(peak - before) / MIB:>8.0f}M {'':>11} {(answer.first_token_s or 0):>7.3f}s "
            f"{(answer.tokens_per_s or 0):>7.1f} {answer.tokens:>6}   (load {load_s:.1f}s)"
        )
    print()
    print(f"  training adapter weights unchanged: {same_weights}")
    print(f"  requires_grad flags unchanged:      {same_flags}")
    print(f"  optimizer state unchanged:          {same_opt}")
    print(f"  RNG states unchanged:               {same_rng}")
    print(f"  no chat adapter left in the model:  {no_leftover}")
    print(f"  training continues: loss {more[0]:.3f}")
    print(f"  total {time.perf_counter() - t_start:.0f}s")
    ok = same_weights and same_flags and same_opt and same_rng and no_leftover
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
