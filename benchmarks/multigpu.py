"""Several GPUs through `accelerate launch`: throughput, memory and the failure path, in one go.

    python3 benchmarks/multigpu.py                          # every GPU: single vs DDP vs FSDP (+ ZeRO-2/3
                                                            #   when deepspeed is installed), then kill -9
    python3 benchmarks/multigpu.py --nproc 2 --modes ddp,fsdp --steps 40
    python3 benchmarks/multigpu.py --tiny                   # CPU smoke: 2 gloo processes, DDP, tiny model

Each mode is one real `leviathan-cockpit train CONFIG --headless --nproc N` of the same config
(the `single` row: one process, the plain comparison), read back from its run log: tokens/s of
all ranks together (median over the steps after --warmup), seconds per step, the peak used memory
of any GPU (the run's own `gpu` records, every GPU of the host), the end status and wall time.
Then the failure path on DDP: rank 1 is killed with SIGKILL right after the first checkpoint; the
last rows say how long the job took to end, what the run log names, and whether the same command
resumes from that checkpoint.

The model is a random Qwen3 of the shape --shape names (2b: hidden 2048, 28 layers, 16 heads,
8 KV heads; 8b: hidden 4096, 36 layers, 32/8 heads, intermediate 12288) with the tiny byte-level
tokenizer; documents of random words packed to 2048, micro batch 4, LoRA r16 on every linear
layer. Throughput per GPU differs from a real vocabulary's (the LM head is small here); the
comparison between modes on the same machine is the point.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.run.rundir import RunDir  # noqa: E402

SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16),
    "2b": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
               num_key_value_heads=8, head_dim=128),
    "8b": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
               num_key_value_heads=8, head_dim=128),
}  # fmt: skip


def build_model(out: Path, shape: str) -> Path:
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    from engine.model.tiny import build_tokenizer

    if (out / "config.json").exists():
        return out
    tok = build_tokenizer("qwen3")
    cfg = Qwen3Config(
        vocab_size=len(tok),
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
        **SHAPES[shape],
    )
    torch.manual_seed(0)
    dtype = torch.float32 if shape == "tiny" else torch.bfloat16
    model = Qwen3ForCausalLM(cfg).to(dtype)
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def write_data(path: Path, rows: int, words: int) -> Path:
    rng = random.Random(0)
    vocab = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
        for _ in range(3000)
    ]
    cats = ["identity", "coding", "psychology", "esoteric"]
    with open(path, "w") as f:
        for i in range(rows):
            n = rng.randint(words // 4, words)
            q = " ".join(rng.choices(vocab, k=max(8, n // 8)))
            a = " ".join(rng.choices(vocab, k=n))
            row = {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            f.write(json.dumps({**row, "_category": cats[i % 4]}) + "\n")
    return path


def write_config(root: Path, name: str, model: Path, data: Path, args, **extra) -> Path:
    import yaml

    cfg = {
        "base_model": str(model),
        "datasets": [{"path": str(data), "type": "chat_template"}],
        "adapter": "lora",
        "lora_r": 16,
        "lora_alpha": 32,
        "sequence_len": args.seq,
        "sample_packing": True,
        "micro_batch_size": args.micro,
        "gradient_accumulation_steps": 1,
        "num_epochs": 1,
        "max_steps": args.steps,
        "learning_rate": 2e-4,
        "warmup_steps": 2,
        "optimizer": "adamw_torch" if args.tiny else "adamw_torch_fused",
        "logging_steps": 1,
        "output_dir": str(root / f"{name}-out"),
        "logs_dir": str(root / "logs"),
        "run_name": name,
        "health": {"gpu_sample_s": 1.0},
        **extra,
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def train(cfg: Path, nproc: int, *extra: str, timeout: float = 3600) -> tuple[int, float, str]:
    t0 = time.time()
    cmd = [
        sys.executable,
        "-m",
        "cockpit.cli",
        "train",
        str(cfg),
        "--headless",
        "--nproc",
        str(nproc),
        *extra,
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    return r.returncode, time.time() - t0, r.stderr


def summarize(run_dir: Path, warmup: int) -> dict:
    from engine.run.events import read_events

    records = read_events(RunDir(run_dir).events).records
    steps = [r for r in records if r["kind"] == "step" and r["step"] > warmup]
    gpu = [g.get("used_mb") or 0 for r in records if r["kind"] == "gpu" for g in r.get("gpus", [])]
    end = next((r for r in reversed(records) if r["kind"] == "end"), {})
    start = next((r for r in records if r["kind"] == "start"), {})
    return {
        "tok_s": statistics.median([r["tokens_per_s"] for r in steps]) if steps else float("nan"),
        "s_step": statistics.median([r["s_per_step"] for r in steps if r.get("s_per_step")])
        if steps
        else None,
        "peak_mib": max(gpu) if gpu else None,
        "status": end.get("status", "?"),
        "world": start.get("world_size"),
        "end": end,
    }


def kill_check(root: Path, model: Path, data: Path, args, nproc: int) -> list[str]:
    """DDP run; SIGKILL rank 1 after the first checkpoint; the job must end and name it; resume."""
    from engine.cli.launcher import launch
    from engine.run.events import read_events

    # long enough that the kill lands mid-run; the resume then goes a few steps past the checkpoint
    cfg = write_config(
        root, "kill", model, data, args, save_steps=max(2, args.warmup), max_steps=args.steps * 50
    )
    job = launch(cfg, nproc, resume="never", force=True)
    t_end = time.time() + 1800
    start = saved = None
    while time.time() < t_end and job.poll() is None and saved is None:
        if job.events.exists():
            recs = read_events(job.events).records
            start = start or next((r for r in recs if r["kind"] == "start"), None)
            saved = next((r for r in recs if r["kind"] == "save"), None)
        time.sleep(0.1)
    if saved is None or start is None:
        job.terminate(10)
        return [f"kill -9 check: no checkpoint before the job ended (exit {job.poll()}); see {job.log_path}"]
    victim = start["ranks"][1]["pid"]
    os.kill(victim, signal.SIGKILL)
    t0 = time.time()
    try:
        code = job.wait(300)
    except subprocess.TimeoutExpired:
        job.terminate(10)
        return ["kill -9 check: the job did NOT end within 300 s of the kill (hung ranks)"]
    took = time.time() - t0
    recs = read_events(job.events).records
    end = recs[-1]
    alive = []
    for r in start["ranks"]:
        try:
            os.kill(r["pid"], 0)
            alive.append(r["rank"])
        except ProcessLookupError:
            pass
    out = [
        f"kill -9 of rank 1 (pid {victim}) after the checkpoint of step {saved['step']}: job ended in {took:.1f} s, exit {code}, "
        f"ranks still alive: {alive or 'none'}",
        f"  run log end: status={end.get('status')} rank={end.get('rank')} message={end.get('message')!r}",
    ]
    code, wall, err = train(cfg, nproc, "--max-steps", str(saved["step"] + 3))
    recs = read_events(job.events).records
    resume = next((r for r in reversed(recs) if r["kind"] == "resume"), {})
    out.append(
        f"  resume on {nproc} processes: exit {code} in {wall:.0f} s, from step {resume.get('from_step')}, "
        f"end status {recs[-1].get('status')}"
    )
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--nproc", type=int, default=0, help="processes for the multi-process rows (default: GPUs)"
    )
    ap.add_argument("--modes", default="single,ddp,fsdp,zero2,zero3")
    ap.add_argument("--shape", default="2b", choices=sorted(SHAPES))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--micro", type=int, default=4)
    ap.add_argument("--rows", type=int, default=0, help="data rows (default: enough for the steps)")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run: tiny model, DDP on 2 processes")
    ap.add_argument("--no-kill", action="store_true", help="skip the kill -9 check")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    import importlib.util

    import torch

    gpus = torch.cuda.device_count()
    if args.tiny:
        args.shape, args.seq, args.micro, args.modes = "tiny", 256, 2, "single,ddp"
        args.steps, args.warmup, nproc = min(args.steps, 12), min(args.warmup, 2), args.nproc or 2
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    else:
        nproc = args.nproc or gpus
        if nproc < 2:
            print(f"needs 2 or more GPUs (found {gpus}); --tiny runs the CPU smoke version", file=sys.stderr)
            return 2
    root = Path(args.workdir or tempfile.mkdtemp(prefix="multigpu-"))
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    model = build_model(root / f"model-{args.shape}", args.shape)
    words = max(64, args.seq // 3)
    rows = args.rows or max(64, args.steps * args.micro * nproc * 2)
    data = write_data(root / "data.jsonl", rows, words)
    print(
        f"model {args.shape} and {rows} rows ready in {time.time() - t0:.0f} s under {root}", file=sys.stderr
    )

    ds = importlib.util.find_spec("deepspeed") is not None
    extras = {
        "single": {},
        "ddp": {},
        "fsdp": {"fsdp_version": 2, "fsdp_config": {"state_dict_type": "FULL_STATE_DICT"}},
        "zero2": {"deepspeed": str(ROOT / "configs/deepspeed/zero2.json")},
        "zero3": {"deepspeed": str(ROOT / "configs/deepspeed/zero3.json")},
    }
    rows_out = []
    base = None
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        n = 1 if mode == "single" else nproc
        if mode.startswith("zero") and not ds:
            rows_out.append((mode, n, "skipped: deepspeed not installed", "", "", "", "", ""))
            continue
        cfg = write_config(root, mode, model, data, args, **extras[mode])
        code, wall, err = train(cfg, n, "--resume", "never", "--force")
        s = summarize(root / "logs" / mode, args.warmup)
        if code != 0:
            tail = err.strip().splitlines()[-1] if err.strip() else ""
            rows_out.append((mode, n, f"exit {code}: {tail[:90]}", "", "", "", "", f"{wall:.0f}"))
            continue
        if mode == "single":
            base = s["tok_s"]
        speed = f"{s['tok_s'] / base:.2f}x" if base else ""
        peak = f"{s['peak_mib']:,}" if s["peak_mib"] else "-"
        s_step = f"{s['s_step']:.3f}" if s["s_step"] else "-"
        rows_out.append((mode, n, s["status"], f"{s['tok_s']:,.0f}", s_step, speed, peak, f"{wall:.0f}"))

    head = ("mode", "procs", "status", "tokens/s", "s/step", "vs single", "peak GPU MiB", "wall s")
    table = [head, *rows_out]
    widths = [max(len(str(r[i])) for r in table) for i in range(len(head))]
    print(
        f"\n{gpus} GPU(s): {torch.cuda.get_device_name(0) if gpus else 'none (CPU, gloo)'}; shape {args.shape}"
    )
    for r in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
    if not args.no_kill:
        print()
        for line in kill_check(root, model, data, args, nproc):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
