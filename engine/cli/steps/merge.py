"""``merge``: a LoRA checkpoint into its base model (engine/ship/merge.py)."""

from __future__ import annotations

from pathlib import Path

from engine.cli.steps import MenuAction, ShipChoice, Step, must_be_new, quiet_transformers, register, size
from engine.cli.steps import stderr_progress as progress
from engine.errors import UserError

NEXT_STEPS = "next: `leviathan-cockpit quantize {out} -o {out}-nf4`, `leviathan-cockpit export vllm {out}`"


def add_args(p) -> None:
    p.add_argument("checkpoint", help="a LoRA checkpoint folder (checkpoint-N)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="the merged model folder to write")
    p.add_argument("--base", help="the base model (default: the one recorded in the checkpoint)")
    p.add_argument(
        "--dtype",
        choices=["auto", "bf16", "fp16", "fp32"],
        default="auto",
        help="weights dtype (auto: bf16 on a GPU, fp32 on CPU)",
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--max-shard-size", default="5GB", help="safetensors shard size (default 5GB)")
    p.add_argument("--run-dir", help="the run folder (default: found from the checkpoint)")
    p.add_argument("--force", action="store_true", help="replace DIR if it exists")
    p.add_argument("--no-verify", action="store_true", help="skip the merged-vs-adapter logits check")


def run(args) -> int:
    quiet_transformers()
    from engine.ship.merge import merge

    r = merge(
        args.checkpoint,
        args.output,
        base=args.base,
        dtype=args.dtype,
        device=args.device,
        max_shard_size=args.max_shard_size,
        force=args.force,
        verify=not args.no_verify,
        run_dir=args.run_dir,
        progress=progress,
    )
    print(f"merged {r.checkpoint} into {r.base}")
    print(f"  wrote {r.output}: {r.shards} shard(s), {size(r.size_bytes)}, {r.dtype} on {r.device}")
    if r.qlora:
        print("  QLoRA adapter: merged into the unquantized base (not into 4-bit weights)")
    if r.vision:
        print("  vision-language model: vision tower and processor files kept")
    if r.max_abs_diff is not None:
        print(f"  check: merged vs base+adapter logits, max |diff| {r.max_abs_diff:.2e}")
    if r.peak_gpu_mb:
        print(f"  peak GPU memory {r.peak_gpu_mb / 1024:.1f} GiB")
    print(f"  {r.seconds:.1f}s" + (f"; run folder {r.run_dir}" if r.run_dir else ""))
    print(NEXT_STEPS.format(out=r.output))
    return 0


def check(c: ShipChoice) -> None:
    from engine.ship.merge import check_checkpoint, check_output

    if c.checkpoint is None:
        raise UserError("no complete checkpoint to merge yet", "wait for a save (s saves one now)")
    check_checkpoint(c.checkpoint)
    if c.merged_out is None:
        raise UserError("merge into: no folder given", "type a folder for the merged model")
    must_be_new(c.merged_out, "type another folder in 'merge into'")
    check_output(c.merged_out, False, [c.checkpoint])


def job(c: ShipChoice, run_dir: Path | None):
    from engine.run import lineage
    from engine.run.rundir import RunDir
    from engine.ship.merge import merge

    # merge takes an explicit run folder only where it has a log (find_run_dir checks).
    known = run_dir if run_dir is not None and RunDir(run_dir).is_run() else None

    def summary(r) -> str:
        diff = f", logits within {r.max_abs_diff:.1e}" if r.max_abs_diff is not None else ""
        return f"{r.output}: {r.shards} shard(s), {lineage.human_size(r.size_bytes)}, {r.dtype} on {r.device}{diff}"

    return f"merge {c.checkpoint.name}", merge, (c.checkpoint, c.merged_out), {"run_dir": known}, summary


register(
    Step(
        ("merge",),
        "merge a LoRA checkpoint into its base model",
        add_args,
        run,
        order=10,
        actions=(
            MenuAction("merge", "merge the checkpoint into its base model", check, job, ticks="merged"),
        ),
    )
)
