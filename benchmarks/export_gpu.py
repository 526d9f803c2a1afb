"""After-training steps on an 8B-shaped model: merge, nf4 quantize + reload, QLoRA-adapter merge.

    python3 benchmarks/export_gpu.py            # on the GPU machine (H100, 64 GB disk): a few minutes
    python3 benchmarks/export_gpu.py --tiny     # a tiny model on CPU; CUDA-only steps are skipped

Builds a random Qwen3 of the 8B shape (hidden 4096, intermediate 12288, 36 layers, 32/8
heads, head_dim 128, vocab 151936) on the GPU in bf16 and saves it (~16 GB), writes a random
LoRA r16 adapter on every linear layer as a checkpoint, then runs the engine's own functions
(the ones `leviathan-cockpit merge` / `quantize` call) and times them. The plain alternatives
are measured in the same run: generation through the unmerged PeftModel against the merged
folder, and the bf16 folder against the nf4 one. Temp folders are removed as it goes (peak
disk ~40 GB). Every number is printed as soon as it is measured, then a table at the end.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from shapes import QWEN3_8B, TINY  # noqa: E402

SHAPE_8B = {k: v for k, v in QWEN3_8B.items() if k != "max_position_embeddings"}
SHAPE_TINY = {**TINY, "vocab_size": 151936}

T0 = time.time()
ROWS: list[tuple[str, str, str]] = []


def say(msg: str) -> None:
    print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


def row(step: str, value: str, note: str = "") -> None:
    ROWS.append((step, value, note))
    say(f"{step}: {value}" + (f"  ({note})" if note else ""))


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f} GiB"


def folder_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.rglob("*") if f.is_file())


def free_gpu() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def build_base(work: Path, shape: dict, device: str):
    """A random Qwen3 of ``shape`` saved in bf16 with a real (tiny) tokenizer and chat template."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, Qwen3Config

    from engine.model.tiny import build_tokenizer

    tok = build_tokenizer("qwen3")
    cfg = Qwen3Config(
        **shape,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    t = time.time()
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    init_s = time.time() - t
    base = work / "base"
    t = time.time()
    model.save_pretrained(base, max_shard_size="5GB")
    tok.save_pretrained(base)
    save_s = time.time() - t
    n = sum(p.numel() for p in model.parameters())
    row(
        "base model",
        f"{n / 1e9:.2f} B params, {gib(folder_bytes(base))}",
        f"init {init_s:.0f}s, save {save_s:.0f}s",
    )
    return model, tok, base


def write_adapter(model, tok, base: Path, ckpt: Path, *, qlora: bool) -> None:
    """A random LoRA r16 on every linear layer (B not zero), saved as a complete checkpoint."""
    import torch
    from peft import LoraConfig, get_peft_model

    from engine.model.model import lora_targets
    from engine.run import checkpoints

    torch.manual_seed(1)
    targets = lora_targets(model)
    lora = LoraConfig(
        r=16, lora_alpha=32, target_modules=targets, init_lora_weights=False, task_type="CAUSAL_LM"
    )
    peft_model = get_peft_model(model, lora)
    with torch.no_grad():  # keep the random delta modest, like a trained adapter's
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.mul_(0.05)
    peft_model.save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    cfg = json.loads((ckpt / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(base)
    (ckpt / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    fingerprint = {"adapter": "qlora" if qlora else "lora", "load_in_4bit": qlora, "lora_r": 16}
    checkpoints.mark_complete(ckpt, {"base_model": str(base), "fingerprint": fingerprint, "step": 1000})
    row(
        "QLoRA adapter (on 4-bit base)" if qlora else "LoRA adapter",
        f"{len(targets)} layers, {gib(folder_bytes(ckpt))} on disk",
    )
    peft_model.unload()


def gen_speed(model, tok, device: str, n: int = 32) -> float:
    import torch

    from engine.ship.merge import probe_ids

    ids = probe_ids(tok, device)
    with torch.no_grad():
        model.generate(input_ids=ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.time()
        out = model.generate(input_ids=ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        if device == "cuda":
            torch.cuda.synchronize()
    return (out.shape[1] - ids.shape[1]) / (time.time() - t)


def compare_generation(base: Path, ckpt: Path, merged: Path, tok, device: str) -> None:
    """The plain alternative to merging: serving base + adapter through PeftModel."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    kw = dict(dtype=dtype, device_map={"": 0}) if device == "cuda" else dict(dtype=dtype)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, **kw), str(ckpt))
    unmerged = gen_speed(model, tok, device)
    del model
    free_gpu()
    model = AutoModelForCausalLM.from_pretrained(merged, **kw)
    merged_tps = gen_speed(model, tok, device)
    del model
    free_gpu()
    row("generate, base + adapter (PeftModel)", f"{unmerged:.1f} tok/s", "batch 1, 32 new tokens")
    row("generate, merged folder", f"{merged_tps:.1f} tok/s", f"x{merged_tps / unmerged:.2f} vs unmerged")


def run_merge(ckpt: Path, out: Path, label: str):
    from engine.ship.merge import merge

    r = merge(ckpt, out, progress=lambda f, m: say(f"  merge {f * 100:3.0f}% {m}"))
    peak = f"peak GPU {gib(r.peak_gpu_mb * 2**20)}" if r.peak_gpu_mb else "CPU"
    row(
        label,
        f"{r.seconds:.1f}s",
        f"{peak}, {r.dtype}, {r.shards} shards, {gib(r.size_bytes)}, max |logit diff| {r.max_abs_diff:.2e}",
    )
    return r


def fs_type(path: Path) -> str:
    """The filesystem a folder lives on (timings of writes depend on it)."""
    best = ("", "?")
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mount, kind = line.split()[:3]
            if str(path.resolve()).startswith(mount) and len(mount) > len(best[0]):
                best = (mount, kind)
    except OSError:
        pass
    return f"{best[1]} at {best[0] or '?'}"


def step(label: str, fn, *args, **kwargs):
    """Run one step; a UserError (no disk, no bitsandbytes, ...) is a row, and the run goes on."""
    from engine.errors import UserError

    try:
        return fn(*args, **kwargs)
    except UserError as e:
        row(label, "failed", e.message)
        return None


def quantize_step(merged: Path, work: Path) -> None:
    from engine.ship.quantize import quantize

    q = quantize(
        merged, work / "nf4", qtype="nf4", progress=lambda f, m: say(f"  quantize {f * 100:3.0f}% {m}")
    )
    row("quantize nf4 (double quant)", f"{q.seconds:.1f}s", f"peak GPU {gib(q.peak_gpu_mb * 2**20)}")
    row(
        "size on disk bf16 -> nf4",
        f"{gib(q.source_bytes)} -> {gib(q.size_bytes)}",
        f"x{q.source_bytes / q.size_bytes:.2f} smaller",
    )
    row(
        "reload nf4 + generate",
        f"{q.reload_seconds:.1f}s load",
        f"{q.gen_tokens_per_s:.1f} tok/s; {q.sample!r}",
    )
    shutil.rmtree(work / "nf4")


def qlora_step(base: Path, tok, work: Path) -> None:
    import torch

    from engine.model.model import load_base

    t = time.time()
    model4 = load_base(str(base), quant_bits=4, dtype=torch.bfloat16)
    say(f"  4-bit base loaded in {time.time() - t:.0f}s")
    qckpt = work / "out" / "checkpoint-2000"
    write_adapter(model4, tok, base, qckpt, qlora=True)
    del model4
    free_gpu()
    run_merge(qckpt, work / "merged-qlora", "merge QLoRA adapter -> bf16 base")
    shutil.rmtree(work / "merged-qlora", ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--tiny", action="store_true", help="a tiny model on CPU (checks the script; no GPU steps)"
    )
    ap.add_argument("--workdir", help="where the temp folders go (default: the system temp dir)")
    ap.add_argument("--skip-compare", action="store_true", help="skip the PeftModel-vs-merged generation")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=330,
        help="start no optional step after this many seconds (default 330)",
    )
    args = ap.parse_args()

    import importlib.util

    import torch

    cuda = torch.cuda.is_available()
    if not args.tiny and not cuda:
        print("no CUDA GPU here: run with --tiny to check the script on CPU", file=sys.stderr)
        return 2
    device = "cuda" if cuda and not args.tiny else "cpu"
    bnb = importlib.util.find_spec("bitsandbytes") is not None
    work = Path(tempfile.mkdtemp(prefix="export-bench-", dir=args.workdir))
    free = shutil.disk_usage(work).free
    import peft
    import transformers

    say(
        f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
        f"bitsandbytes {'yes' if bnb else 'missing'}; {torch.cuda.get_device_name(0) if cuda else 'CPU'}; "
        f"{gib(free)} free in {work} ({fs_type(work)})"
    )
    if not args.tiny and free < 40 * 2**30:
        say(
            f"warning: {gib(free)} free, the run peaks near 39 GiB; pass --workdir on a bigger disk if it fails"
        )
    try:
        # 1. base + LoRA checkpoint
        model, tok, base = build_base(work, SHAPE_TINY if args.tiny else SHAPE_8B, device)
        ckpt = work / "out" / "checkpoint-1000"
        write_adapter(model, tok, base, ckpt, qlora=False)
        del model
        free_gpu()

        # 2. merge (bf16 on GPU, fp32 on CPU), and the plain alternative: serving unmerged
        merged = work / "merged"
        if step("merge LoRA -> base", run_merge, ckpt, merged, "merge LoRA -> base") is None:
            return 1
        if args.skip_compare:
            pass
        elif time.time() - T0 < 0.7 * args.budget_s:
            compare_generation(base, ckpt, merged, tok, device)
        else:
            row("generate, PeftModel vs merged", "skipped", f"past {0.7 * args.budget_s:.0f}s")

        # 3. nf4 quantization, reload, one generation
        if device != "cuda":
            row("quantize nf4", "skipped", "needs CUDA (bitsandbytes)")
        elif not bnb:
            row("quantize nf4", "skipped", "bitsandbytes is not installed (pip install bitsandbytes)")
        else:
            step("quantize nf4", quantize_step, merged, work)
        shutil.rmtree(merged)

        # 4. QLoRA adapter (made on a 4-bit base, as QLoRA trains) merged into the bf16 base
        if device != "cuda" or not bnb:
            row(
                "QLoRA-adapter merge",
                "skipped",
                "a QLoRA adapter is made on a 4-bit base: needs CUDA + bitsandbytes",
            )
        elif time.time() - T0 > args.budget_s:
            row("QLoRA-adapter merge", "skipped", f"past the {args.budget_s:.0f}s budget")
        else:
            step("QLoRA-adapter merge", qlora_step, base, tok, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    width = max(len(s) for s, _, _ in ROWS)
    vwidth = max(len(v) for _, v, _ in ROWS)
    print(f"\n{'step':<{width}}  {'result':<{vwidth}}  notes")
    print(f"{'-' * width}  {'-' * vwidth}  -----")
    for s, v, n in ROWS:
        print(f"{s:<{width}}  {v:<{vwidth}}  {n}")
    print(f"\ntotal {time.time() - T0:.0f}s; temp folders removed ({work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
