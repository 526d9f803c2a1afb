"""Tokens/s of our engine against plain TRL SFTTrainer, same model, same data, same GPU, one run.

    python3 benchmarks/throughput.py                       # LoRA and QLoRA, 8B-shaped Qwen3
    python3 benchmarks/throughput.py --variants trl,ours   # LoRA only
    python3 benchmarks/throughput.py --tiny --steps 8 --warmup 2   # a CPU smoke run of the script

The model is an 8B-shaped Qwen3 (hidden 4096, intermediate 12288, 36 layers, 32 heads, 8 KV
heads, head_dim 128, vocab 151936, untied) random-initialised on the GPU in bf16; LoRA r16
alpha 32 dropout 0 on q,k,v,o,gate,up,down; documents of random length 256-2048 packed to 2048;
micro batch 4. Each variant trains `--steps` optimizer steps and is timed over steps
warmup+1..steps with synchronisation. MFU by the LoRA convention:
FLOPs/token = 4 x frozen matmul params (input embedding excluded) + 6 x LoRA params
+ 6 x layers x hidden x 2048, divided by the bf16 matmul ceiling measured in the same run.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# The engine sets this for its runs; set here so both sides of the comparison get it.
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from engine.run.rundir import RunDir  # noqa: E402

SEQ = 2048
MICRO = 4


def matmul_ceiling() -> float:
    from engine.model.mfu import matmul_ceiling as measure

    return measure() or float("nan")


def qwen3_config(tiny: bool, vocab: int):
    from shapes import qwen3_config as shaped

    return shaped(tiny, vocab_size=vocab) if tiny else shaped()


def make_docs(n_docs: int, vocab: int, seed: int = 0, lo: int = 256, hi: int = SEQ):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(lo, hi + 1, (n_docs,), generator=g)
    return [torch.randint(10, vocab, (int(n),), generator=g).tolist() for n in lengths]


class Timer(TrainerCallback):
    """Synchronised wall time at the end of chosen steps; token counts come from the collator."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.t: dict[int, float] = {}
        self.losses: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in (self.warmup, self.steps):
            torch.cuda.synchronize() if torch.cuda.is_available() else None
            self.t[state.global_step] = time.perf_counter()
        if state.global_step >= self.steps:
            control.should_training_stop = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))


class CountingCollator:
    """Wraps a collator and records each batch's token count, in order, on the CPU."""

    def __init__(self, inner) -> None:
        self.inner, self.counts = inner, []

    def __call__(self, examples):
        batch = self.inner(examples)
        self.counts.append(int(batch["input_ids"].numel()))
        return batch

    def __getattr__(self, name):
        return getattr(self.inner, name)


def lora_config():
    from peft import LoraConfig

    return LoraConfig(
        r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )


def flops_per_token(model, cfg) -> tuple[float, int, int]:
    """LoRA convention (engine.model.mfu); frozen params from the shape, so 4-bit storage counts the same."""
    from engine.model.mfu import flops_per_token as fpt
    from engine.model.mfu import frozen_matmul_params

    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    return fpt(cfg, lora, SEQ), frozen_matmul_params(cfg), lora


def result_row(name, timer, collator, warmup, steps, model, cfg, ceiling, gc_on, extra=""):
    dt = timer.t[steps] - timer.t[warmup]
    tokens = sum(collator.counts[warmup:steps])  # gradient accumulation 1: one batch per step
    tps = tokens / dt
    fpt, frozen, lora = flops_per_token(model, cfg)
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
    return {
        "variant": name,
        "tokens_per_s": tps,
        "s_per_step": dt / (steps - warmup),
        "mfu": tps * fpt / ceiling,
        "peak_gib": peak,
        "grad_ckpt": gc_on,
        "losses": timer.losses,
        "frozen_params": frozen,
        "lora_params": lora,
        "note": extra,
        "alloc": alloc_stats(),
    }


def alloc_stats() -> dict:
    """The caching allocator's pressure: retries (a full flush and a device sync each), cudaMalloc
    calls and the reserved peak; an 80 GB card near its limit pays these inside the step."""
    if not torch.cuda.is_available():
        return {}
    s = torch.cuda.memory_stats()
    return {
        "retries": s.get("num_alloc_retries", 0),
        "device_allocs": s.get("num_device_alloc", 0),
        "device_frees": s.get("num_device_free", 0),
        "reserved_peak_gib": s.get("reserved_bytes.all.peak", 0) / 2**30,
    }


def run_plain_trl(model, tokenizer, dataset, args, out, qlora: bool):
    """TRL 1.16's defaults: packing=True (bfd, padding-free), gradient checkpointing on, sdpa."""
    from trl import SFTConfig, SFTTrainer

    model.config._attn_implementation = "sdpa"
    sft = SFTConfig(
        output_dir=out,
        per_device_train_batch_size=MICRO,
        max_length=SEQ,
        packing=True,
        max_steps=args.steps,
        learning_rate=2e-4,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        bf16=torch.cuda.is_available(),
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
    )
    timer = Timer(args.warmup, args.steps)
    trainer = SFTTrainer(
        model=model,
        args=sft,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(),
        callbacks=[timer],
    )
    collator = CountingCollator(trainer.data_collator)
    trainer.data_collator = collator
    trainer.train()
    return trainer, timer, collator, bool(sft.gradient_checkpointing)


def prepared_rows(dataset, config):
    """The rows as engine.data.prepare leaves them (int32 ids, int8 mask, the packing index), in memory."""
    import numpy as np
    import pyarrow as pa

    from engine.data.packview import RowReader, pack_index
    from engine.data.prepare import Prepared, rows_batch

    lengths = np.asarray([len(r) for r in dataset["input_ids"]], np.int64)
    ids = np.concatenate([np.asarray(r, np.int32) for r in dataset["input_ids"]])
    batch = rows_batch(ids, np.ones(len(ids), np.int8), lengths, ["x"] * len(lengths))
    table = pa.Table.from_batches([batch])
    order, bounds = pack_index(np.arange(len(lengths)), lengths, SEQ if config.sample_packing else None)
    index = {"train_order": order, "train_bounds": bounds}
    return Prepared(train=dataset, val=None, stats=None, index=index, reader=RowReader(table))


def run_ours(model, tokenizer, dataset, args, out, qlora: bool):
    """The engine's own path: attach_lora + build_trainer (LeviathanTrainer, varlen attention, Liger)."""
    from engine.config.config import RunConfig
    from engine.model import attention
    from engine.model.memory import estimate_bytes
    from engine.model.model import attach_lora
    from engine.train.build import build_trainer, liger_available
    from engine.train.train import RunPaths

    model.config._attn_implementation = attention.register()
    config = RunConfig.model_validate(
        {
            "base_model": "bench",
            "datasets": [{"path": "bench.jsonl"}],
            "adapter": "qlora" if qlora else "lora",
            "lora_r": 16,
            "lora_alpha": 32,
            "lora_dropout": 0.0,
            "sequence_len": SEQ,
            "micro_batch_size": MICRO,
            "max_steps": args.steps,
            "learning_rate": 2e-4,
            "logging_steps": 1,
            "optimizer": "adamw_torch_fused",
        }
    )
    if torch.cuda.is_available():
        need = estimate_bytes(model.config, MICRO * SEQ, 4 if qlora else None, False, liger_available())
        free = (
            torch.cuda.mem_get_info()[0] + torch.cuda.memory_allocated()
        )  # the loaded weights count in `need`
        gc_on = need > 0.92 * free
        note = f"gc auto: need~{need / 2**30:.0f}G free {free / 2**30:.0f}G liger={liger_available()}"
    else:
        gc_on, note = False, "cpu"
    if args.force_gc is not None:
        gc_on = args.force_gc
    if not gc_on and hasattr(model, "gradient_checkpointing_disable"):
        model.gradient_checkpointing_disable()
    peft_model = attach_lora(model, config, gc_on)
    timer = Timer(args.warmup, args.steps)
    paths = RunPaths(Path(out), Path(out))
    prepared = prepared_rows(dataset, config)
    trainer = build_trainer(
        config, prepared, peft_model, tokenizer, timer, paths, gc_on, torch.cuda.is_available()
    )
    # The engine's fault guard too (one isfinite check per optimizer step), as a real run has it.
    from engine.run.control import Controls
    from engine.run.events import RunLog
    from engine.train.guard import Guard

    timer.meta = {}
    Guard(config, RunLog(RunDir(out).events), Controls(), out, fresh=True).attach(trainer, timer)
    collator = CountingCollator(trainer.data_collator)
    # Counted where the step takes them (the collator may run in loader workers).
    fetch = trainer.get_batch_samples

    def counted(*a, **kw):
        batches, n = fetch(*a, **kw)
        collator.counts += [int(b["input_ids"].numel()) for b in batches]
        return batches, n

    trainer.get_batch_samples = counted
    trainer.train()
    return trainer, timer, collator, gc_on, note


def variant_env(name: str) -> dict:
    """A variant named ``...-peftcast`` runs PEFT's own LoRA forward (engine/model/lora_autocast.py);
    ``...-w2`` makes its batches in two DataLoader workers (``LEVIATHAN_DATALOADER_WORKERS``);
    ``...-nogroup`` keeps each LoRA layer its own autograd node (``engine/model/lora_group.py``);
    ``...-norelayout`` leaves the training model's sibling weights apart (``LEVIATHAN_RELAYOUT``);
    ``...-nolag`` reads each step's record and NaN verdict at its own boundary (``LEVIATHAN_STEP_LAG``)."""
    env = dict(os.environ)
    if "peftcast" in name:
        env["LEVIATHAN_LORA_FORWARD"] = "peft"
    if "-w2" in name:  # the batches made ahead in two loader workers
        env["LEVIATHAN_DATALOADER_WORKERS"] = "2"
    if "-nogroup" in name:  # each LoRA layer its own autograd node (engine/model/lora_group.py off)
        env["LEVIATHAN_LORA_FORWARD"] = "nogroup"
    if "-norelayout" in name:  # siblings' weights left where loading put them
        env["LEVIATHAN_RELAYOUT"] = "off"
    if "-nolag" in name:  # the host waits for each step's values at its boundary
        env["LEVIATHAN_STEP_LAG"] = "off"
    return env


def build_model(cfg, tiny: bool):
    from transformers import AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model


def load_4bit(path):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    q = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_quant_storage=torch.bfloat16,
    )
    return AutoModelForCausalLM.from_pretrained(
        path, quantization_config=q, dtype=torch.bfloat16, device_map={"": 0}
    )


def free(*objs):
    for o in objs:
        del o
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def run_variant(name, cfg, tokenizer, dataset, args, work, ceiling) -> dict:
    """One variant, in this (fresh) process, on the saved base model."""
    from transformers import AutoModelForCausalLM

    qlora = "qlora" in name
    if qlora:
        model = load_4bit(args.save_dir)
    else:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(args.save_dir, dtype=dtype).to(device)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    fn = run_plain_trl if name.startswith("trl") else run_ours
    out = fn(model, tokenizer, dataset, args, f"{work}/{name}", qlora)
    trainer, timer, collator, gc_on = out[:4]
    note = out[4] if len(out) > 4 else ""
    return result_row(
        name, timer, collator, args.warmup, args.steps, trainer.model, cfg, ceiling, gc_on, note
    )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--variants", default="trl,ours,trl-qlora,ours-qlora")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--docs", type=int, default=0)
    ap.add_argument("--force-gc", type=lambda s: s == "on", default=None)
    ap.add_argument("--save-dir", default=None, help="where to save the bf16 model for QLoRA loading")
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", action="store_true", help="internal: run one variant and write --json")
    args = ap.parse_args()

    from datasets import Dataset

    from engine.model.tiny import build_tokenizer

    variants = [v for v in args.variants.split(",") if torch.cuda.is_available() or "qlora" not in v]
    tokenizer = build_tokenizer("qwen3")
    cfg = qwen3_config(args.tiny, len(tokenizer))
    n_docs = args.docs or int(args.steps * MICRO * SEQ / 1100 * 1.3) + 20
    dataset = Dataset.from_dict(
        {
            "input_ids": make_docs(
                n_docs, cfg.vocab_size, lo=32 if args.tiny else 256, hi=256 if args.tiny else SEQ
            )
        }
    )
    ceiling = matmul_ceiling()
    print(
        f"device: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'}  "
        f"matmul ceiling: {ceiling / 1e12:.0f} TFLOP/s  docs: {n_docs}",
        flush=True,
    )
    work = tempfile.mkdtemp(prefix="lev-bench-")
    if args.child:
        rows = [run_variant(variants[0], cfg, tokenizer, dataset, args, work, ceiling)]
        Path(args.json).write_text(json.dumps(rows))
        return 0
    # Each variant in a fresh process: Liger patches module-level functions of the model
    # code (RoPE, ...), which would otherwise leak into the plain-TRL runs that follow.
    save = args.save_dir or f"{work}/base"
    if not Path(save, "config.json").exists():
        model = build_model(cfg, args.tiny)
        model.save_pretrained(save)
        tokenizer.save_pretrained(save)
        del model
        free()  # the children size gradient checkpointing from what is free on the GPU
    rows = []
    for name in variants:
        out = Path(work) / f"{name}.json"
        t0 = time.time()
        cmd = [
            sys.executable,
            __file__,
            "--child",
            "--variants",
            name,
            "--save-dir",
            save,
            "--json",
            str(out),
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
            "--docs",
            str(n_docs),
        ]
        cmd += ["--tiny"] if args.tiny else []
        cmd += ["--force-gc", "on" if args.force_gc else "off"] if args.force_gc is not None else []
        proc = subprocess.run(cmd, env=variant_env(name))
        if proc.returncode != 0 or not out.exists():
            print(f"{name}: failed (exit {proc.returncode})", flush=True)
            continue
        rows += json.loads(out.read_text())
        print(json.dumps(rows[-1]), f"wall {time.time() - t0:.0f}s", flush=True)
    base = {r["variant"]: r["tokens_per_s"] for r in rows}
    print()
    print(
        f"{'variant':<12} {'tokens/s':>10} {'x plain':>8} {'MFU':>6} {'peak GiB':>9} {'grad ckpt':>9}  note"
    )
    for r in rows:
        ref = base.get("trl-qlora" if "qlora" in r["variant"] else "trl")
        ratio = r["tokens_per_s"] / ref if ref else float("nan")
        print(
            f"{r['variant']:<12} {r['tokens_per_s']:>10,.0f} {ratio:>8.2f} {100 * r['mfu']:>5.1f}% "
            f"{r['peak_gib']:>9.1f} {str(r['grad_ckpt']):>9}  {r['note']}"
        )
    # The same seed, data and model: a variant of ours that changes only speed trains the same.
    losses = {r["variant"]: r["losses"] for r in rows}
    for name, curve in losses.items():
        ref = losses.get("ours-qlora" if "qlora" in name else "ours")
        if name.startswith("ours-") and name != "ours-qlora" and ref and len(ref) == len(curve):
            diff = max(abs(a - b) for a, b in zip(curve, ref, strict=True))
            print(f"{name}: {len(curve)} step losses, max |difference| from ours {diff:.2e}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "throughput.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
