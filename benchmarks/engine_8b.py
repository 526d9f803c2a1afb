"""The real command line on an 8B-shaped model: `leviathan-cockpit train CONFIG --headless`, LoRA and QLoRA.

    python3 benchmarks/engine_8b.py [--steps 30] [--variants lora,qlora,vl-lora,vl-qlora]

Builds a random-initialised 8B-shaped Qwen3 (bf16) with a tiny byte-level tokenizer, saves it,
and for the ``vl-`` variants the guide's own base shape: a Qwen3-VL whose text tower is
Qwen3-8B's (Qwen3-VL-8B's interleaved mrope) with a small vision tower (trained text-only),
writes a chat JSONL of long synthetic conversations and an Axolotl-style config, then runs the
CLI headless in a subprocess for each variant and reads its run log: tokens/s over the steps
after warm-up, the time to the first step, the peak GPU memory from the run log's `gpu`
records, the gradient checkpointing choice. Prints a table.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from synthetic import write_chat_data  # noqa: E402

from engine.run.rundir import RunDir  # noqa: E402


def vl_config(tiny: bool, tok):
    """Qwen3-VL with Qwen3-8B's text tower and Qwen3-VL-8B's mrope; a 2-block vision tower."""
    from shapes import QWEN3_8B, TINY

    from engine.model.tiny import qwen3_vl_config

    shape = TINY if tiny else QWEN3_8B
    half = shape["head_dim"] // 2  # mrope sections cover half the head: Qwen3-VL-8B's 24/20/20 of 64
    section = [24, 20, 20] if half == 64 else [half - 2 * (half * 5 // 16), half * 5 // 16, half * 5 // 16]
    text = dict(
        **{**shape, "vocab_size": len(tok) if tiny else shape["vocab_size"]},
        tie_word_embeddings=False,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 5_000_000.0,
            "mrope_section": section,
            "mrope_interleaved": True,
        },
    )
    vision = dict(hidden_size=256, intermediate_size=512, num_heads=4, num_position_embeddings=256)
    return qwen3_vl_config(text, tok, vision)


def build(workdir: Path, tiny: bool, vl: bool = False) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    from engine.model.tiny import build_tokenizer

    tok = build_tokenizer("qwen3_vl" if vl else "qwen3")
    from shapes import qwen3_config

    if vl:
        cfg = vl_config(tiny, tok)
    else:
        cfg = qwen3_config(tiny, vocab_size=len(tok)) if tiny else qwen3_config()
        cfg.eos_token_id, cfg.pad_token_id = tok.eos_token_id, tok.pad_token_id
    device = "cuda" if torch.cuda.is_available() else "cpu"
    auto = AutoModelForImageTextToText if vl else AutoModelForCausalLM
    with torch.device(device):
        model = auto.from_config(cfg, dtype=torch.bfloat16 if device == "cuda" else torch.float32)
    path = workdir / ("model-vl" if vl else "model")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    del model
    # Give the memory back: the trainer subprocesses size gradient checkpointing from what is free.
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return path


def cli_argv(cfg: Path) -> list[str]:
    """The command line the benchmarks run: ``leviathan-cockpit train CFG --headless``."""
    return [sys.executable, "-m", "cockpit.cli", "train", str(cfg), "--headless"]


def cli_env() -> dict:
    return {**os.environ, "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}", "PYTHONUNBUFFERED": "1"}


def run_cli(cfg: Path, env: dict) -> tuple[int, float, str]:
    t0 = time.time()
    p = subprocess.run(cli_argv(cfg), cwd=cfg.parent, env=env, capture_output=True, text=True)
    return p.returncode, time.time() - t0, p.stderr[-3000:]


def write_config(
    work: Path, name: str, model: Path, data: Path, *, adapter: str, steps: int, tiny: bool, **over
) -> Path:
    """``work/NAME.yaml``: the benchmarks' Axolotl-style config (LoRA r16 on all linear layers,
    packed, micro batch 4 x 2048; 256 tokens when ``tiny``), its run log in ``work/logs/NAME``;
    ``over`` replaces or adds keys."""
    import yaml

    cfg = {
        "base_model": str(model),
        "datasets": [{"path": str(data), "type": "chat_template"}],
        "adapter": adapter,
        "lora_r": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.0,
        "lora_target_linear": True,
        "sequence_len": 256 if tiny else 2048,
        "sample_packing": True,
        "micro_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "max_steps": steps,
        "learning_rate": 2e-4,
        "warmup_steps": 5,
        "logging_steps": 1,
        "save_steps": steps,
        "save_total_limit": 1,
        "output_dir": str(work / f"out-{name}"),
        "logs_dir": str(work / "logs"),
        "run_name": name,
        "health": {"gpu_sample_s": 2},
        **over,
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def summarise(name: str, events: Path, warmup: int, wall: float) -> dict:
    recs = [json.loads(line) for line in events.read_text().splitlines()]
    steps = [r for r in recs if r["kind"] == "step"]
    start = next(r for r in recs if r["kind"] == "start")
    first_step_t = steps[0]["t"] - recs[0]["t"]
    w = next(s for s in steps if s["step"] == warmup)
    last = steps[-1]
    tps = (last["tokens"] - w["tokens"]) / (last["t"] - w["t"])
    peaks = [r.get("torch_peak_mb") or 0 for r in recs if r["kind"] == "gpu"]
    return {
        "variant": name,
        "tokens_per_s": tps,
        "s_per_step": (last["t"] - w["t"]) / (last["step"] - warmup),
        "first_step_s": first_step_t,
        "peak_gib": max(peaks, default=0) / 1024,
        "grad_ckpt": start.get("gradient_checkpointing"),
        "why": start.get("gradient_checkpointing_reason"),
        "final_loss": last["loss"],
        "mfu": sum(s.get("mfu") or 0 for s in steps[warmup:]) / max(len(steps[warmup:]), 1),
        "attention": start.get("attention"),
        "liger": start.get("liger"),
        "wall_s": wall,
        "setup_s": start.get("setup_s"),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--variants", default="lora,qlora")
    ap.add_argument("--rows", type=int, default=1200)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="lev-8b-"))
    work.mkdir(parents=True, exist_ok=True)
    models = {}
    for vl in sorted({v.startswith("vl-") for v in args.variants.split(",")}):
        t0 = time.time()
        models[vl] = build(work, args.tiny, vl)
        print(f"model built and saved in {time.time() - t0:.0f}s at {models[vl]}", flush=True)
    data = write_chat_data(work / "chat.jsonl", args.rows)
    env = cli_env()
    rows = []
    for v in args.variants.split(","):
        model = models[v.startswith("vl-")]
        path = write_config(
            work, v, model, data, adapter=v.removeprefix("vl-"), steps=args.steps, tiny=args.tiny
        )
        rc, wall, err = run_cli(path, env)
        print(f"{v}: exit {rc} in {wall:.0f}s", flush=True)
        if rc != 0:
            print(err, flush=True)
            continue
        rows.append(summarise(v, RunDir(work / "logs" / v).events, args.warmup, wall))
        print(json.dumps(rows[-1]), flush=True)
    print()
    print(
        f"{'variant':<8} {'tokens/s':>9} {'MFU':>5} {'s/step':>7} {'1st step s':>10} {'peak GiB':>9} {'ckpt':>5} "
        f"{'loss':>6}  gradient checkpointing choice"
    )
    for r in rows:
        print(
            f"{r['variant']:<8} {r['tokens_per_s']:>9,.0f} {(r['mfu'] or 0):>5.1%} {r['s_per_step']:>7.2f} {r['first_step_s']:>10.1f} "
            f"{r['peak_gib']:>9.1f} {str(r['grad_ckpt']):>5} {r['final_loss']:>6.3f}  {r['why']}"
        )
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "engine_8b.json").write_text(json.dumps(rows, indent=1))
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
