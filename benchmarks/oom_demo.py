"""A real CUDA out of memory in a step, survived by the engine (guard.oom_retry), on one GPU.

    python3 benchmarks/oom_demo.py              # 8B-shaped Qwen3 on the GPU; under 4 minutes on an H100
    python3 benchmarks/oom_demo.py --tiny       # CPU smoke run: tiny model, OOM injected (LEVIATHAN_FAULT)

An 8B-shaped random Qwen3 (bf16, saved once to a temporary folder by a child process, so this
process never holds GPU memory) is trained through the real command line,
`leviathan-cockpit train CONFIG --headless`, with gradient checkpointing off and a micro
batch of packed 2048-token rows chosen so that the memory estimate exceeds the GPU (8 on
80 GB): the first step runs out of memory for real. Three runs, one table:

1. oom_retry off (what a plain Trainer does: the run dies; here with exit 2 and the advice);
2. oom_retry on: the step is retried at half the micro batch and twice the accumulation
   (again if needed), the run goes on with the same effective batch and step counter, an
   `oom` alert says so, and the new values are written to the run state;
3. the same command again with two more steps: it resumes at the smaller micro batch (start
   record, no new OOM).
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

SEQ = 2048


def build_model(out: Path, tiny: bool) -> None:
    """Runs in a child process: random init on the GPU (or CPU), save, exit (memory given back)."""
    import torch
    from transformers import AutoModelForCausalLM

    from engine.model.tiny import build_tokenizer

    tok = build_tokenizer("qwen3")
    from shapes import qwen3_config

    cfg = qwen3_config(tiny, vocab_size=len(tok)) if tiny else qwen3_config()
    cfg.eos_token_id, cfg.pad_token_id = tok.eos_token_id, tok.pad_token_id
    device = "cuda" if torch.cuda.is_available() and not tiny else "cpu"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(
            cfg, dtype=torch.bfloat16 if device == "cuda" else torch.float32
        )
    model.save_pretrained(out)
    tok.save_pretrained(out)


def pick_micro(model_dir: Path) -> tuple[int, str]:
    """The smallest micro batch (8, 16, ...) whose estimate without checkpointing exceeds the GPU."""
    import torch
    from transformers import AutoConfig

    from engine.model.memory import estimate_bytes
    from engine.train.build import liger_available

    cfg = AutoConfig.from_pretrained(model_dir)
    total = torch.cuda.get_device_properties(0).total_memory
    liger = liger_available()
    micro = 8
    while estimate_bytes(cfg, micro * SEQ, None, False, liger) < 1.15 * total:
        micro *= 2
    need = estimate_bytes(cfg, micro * SEQ, None, False, liger)
    return (
        micro,
        f"estimate at micro {micro} x {SEQ}: {need / 2**30:.0f} GiB > {total / 2**30:.0f} GiB on the GPU",
    )


def write_config(
    work: Path, name: str, model: Path, data: Path, micro: int, steps: int, tiny: bool, retry: bool
) -> Path:
    import yaml

    cfg = {
        "base_model": str(model),
        "datasets": [{"path": str(data), "type": "chat_template"}],
        "adapter": "lora",
        "lora_r": 16,
        "lora_alpha": 32,
        "lora_target_linear": True,
        "sequence_len": 128 if tiny else SEQ,
        "sample_packing": True,
        "micro_batch_size": micro,
        "gradient_accumulation_steps": 1,
        "max_steps": steps,
        "learning_rate": 1e-4,
        "warmup_steps": 1,
        "optimizer": "adamw_torch_fused",
        "gradient_checkpointing": False,
        "bf16": "auto",
        "logging_steps": 1,
        "save_steps": steps,
        "output_dir": str(work / f"out-{name}"),
        "logs_dir": str(work / "logs"),
        "run_name": name,
        "seed": 1,
        "health": {"gpu_sample_s": 1.0},
        "guard": {"oom_retry": retry},
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_cli(cfg: Path, env: dict, *extra: str) -> tuple[int, float, str]:
    t0 = time.time()
    p = subprocess.run(
        [sys.executable, "-m", "cockpit.cli", "train", str(cfg), "--headless", *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    return p.returncode, time.time() - t0, p.stderr


def summarise(label: str, events: Path, since: int, rc: int, wall: float) -> dict:
    recs = [json.loads(x) for x in events.read_text().splitlines() if x.strip()][since:]
    start = next((r for r in recs if r["kind"] == "start"), {})
    steps = [r for r in recs if r["kind"] == "step"]
    ooms = [r for r in recs if r["kind"] == "alert" and r.get("rule") == "oom"]
    end = next((r for r in reversed(recs) if r["kind"] == "end"), {})
    peaks = [r.get("torch_peak_mb") or r.get("used_mb") or 0 for r in recs if r["kind"] == "gpu"]
    peaks = [p for p in peaks if p]
    tps = None
    if len(steps) >= 3:
        a, b = steps[1], steps[-1]
        tps = (b["tokens"] - a["tokens"]) / max(b["t"] - a["t"], 1e-9)
    return {
        "run": label,
        "exit": rc,
        "status": end.get("status", "?"),
        "start micro x accum": f"{start.get('micro_batch_size', '?')} x {start.get('gradient_accumulation_steps', '?')}",
        "oom alerts": "; ".join(
            f"step {a.get('step', '-')}: {a.get('micro_batch_size', '')}x{a.get('gradient_accumulation_steps', '')}"
            if a.get("level") == "warning"
            else f"{a['level']} (step {a.get('step', '-')})"
            for a in ooms
        )
        or "-",
        "steps": f"{steps[0]['step']}-{steps[-1]['step']}" if steps else "-",
        "last loss": f"{steps[-1]['loss']:.4f}" if steps and isinstance(steps[-1]["loss"], float) else "-",
        "tokens/s": f"{tps:,.0f}" if tps else "-",
        "peak GiB": f"{max(peaks) / 1024:.1f}" if peaks else "-",
        "wall s": f"{wall:.0f}",
        "_end": end,
        "_ooms": ooms,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run with an injected OOM")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--micro", type=int, help="micro batch (default: the smallest that cannot fit)")
    ap.add_argument("--workdir", help="keep files here (default: a temporary folder)")
    ap.add_argument(
        "--skip-off", action="store_true", help="leave out the oom_retry-off run (one model load less)"
    )
    ap.add_argument("--build-only", metavar="DIR", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build_only:
        build_model(Path(args.build_only), args.tiny)
        return 0

    work = Path(args.workdir or tempfile.mkdtemp(prefix="oom-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
    }
    t0 = time.time()
    model = work / "model"
    if not (model / "config.json").exists():
        cmd = [sys.executable, __file__, "--build-only", str(model)] + (["--tiny"] if args.tiny else [])
        subprocess.run(cmd, check=True, env=env)
    print(f"model ready in {time.time() - t0:.0f}s: {model}", flush=True)

    data = work / "data.jsonl"
    write_chat_data(data, 400 if not args.tiny else 200, (150, 1400) if not args.tiny else (10, 60))
    if args.tiny:
        micro, why = args.micro or 4, "CPU: the OOM is injected at step 2 (LEVIATHAN_FAULT=oom@step:2)"
        env["LEVIATHAN_FAULT"] = "oom@step:2"
    else:
        import torch

        if not torch.cuda.is_available():
            print("no CUDA GPU here: run with --tiny for the CPU smoke run", file=sys.stderr)
            return 2
        micro, why = (args.micro, "as given") if args.micro else pick_micro(model)
    print(f"micro batch {micro}: {why}", flush=True)

    rows = []
    variants = (("retry-on", True),) if args.skip_off else (("retry-off", False), ("retry-on", True))
    for name, retry in variants:
        cfg = write_config(work, name, model, data, micro, args.steps, args.tiny, retry)
        rc, wall, err = run_cli(cfg, env)
        rows.append(
            summarise(
                f"oom_retry {'on' if retry else 'off'}", RunDir(work / "logs" / name).events, 0, rc, wall
            )
        )
        if rc not in (0, 2):
            print(err[-3000:], file=sys.stderr)
        print(f"{name}: exit {rc} in {wall:.0f}s", flush=True)
    # The same command again, two steps more: resumes with the run state's micro batch.
    events = RunDir(work / "logs" / "retry-on").events
    before = len(events.read_text().splitlines())
    env.pop("LEVIATHAN_FAULT", None)
    cfg = work / "retry-on.yaml"
    rc, wall, err = run_cli(cfg, env, "--max-steps", str(args.steps + 2))
    rows.append(summarise("same command, resumed", events, before, rc, wall))
    if rc != 0:
        print(err[-3000:], file=sys.stderr)

    cols = [k for k in rows[0] if not k.startswith("_")]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print()
    print(" | ".join(c.ljust(widths[c]) for c in cols))
    print("-+-".join("-" * widths[c] for c in cols))
    for r in rows:
        print(" | ".join(str(r[c]).ljust(widths[c]) for c in cols))
    print()
    for r in rows:
        for a in r["_ooms"]:
            print(f"[{r['run']}] ALERT oom ({a['level']}): {a['message']}")
        if r["_end"].get("message"):
            print(f"[{r['run']}] end: {r['_end']['message'].splitlines()[0]}")
    state = work / "out-retry-on" / "leviathan-state.json"
    if state.exists():
        print(f"\nrun state {state}:\n{state.read_text()}")
    off, on, resumed = ([None] if args.skip_off else []) + rows
    ok = (off is None or off["exit"] == 2) and on["exit"] == 0 and on["_ooms"] and resumed["exit"] == 0
    ok = ok and not any(a["level"] == "warning" for a in resumed["_ooms"])
    print(f"\n{'OK' if ok else 'UNEXPECTED'}: total {time.time() - t0:.0f}s; files in {work}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
