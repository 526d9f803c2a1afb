"""``quantize``: a merged model to nf4 / int8 with bitsandbytes (engine/ship/quantize.py)."""

from __future__ import annotations

from pathlib import Path

from engine.cli.steps import (
    MenuAction,
    ShipChoice,
    Step,
    must_be_new,
    need_model_dir,
    quiet_transformers,
    register,
    size,
)
from engine.cli.steps import stderr_progress as progress


def add_args(p) -> None:
    p.add_argument("model_dir", metavar="DIR", help="a merged model folder")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="the quantized model folder to write")
    p.add_argument("--type", dest="qtype", choices=["nf4", "int8"], default="nf4")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.add_argument("--no-verify", action="store_true", help="skip loading OUT back and generating")


def run(args) -> int:
    from engine.ship.quantize import check_model_dir, require_cuda_bnb

    check_model_dir(args.model_dir)
    require_cuda_bnb(args.qtype)
    quiet_transformers()
    from engine.ship.quantize import quantize

    r = quantize(
        args.model_dir,
        args.output,
        qtype=args.qtype,
        force=args.force,
        verify=not args.no_verify,
        progress=progress,
    )
    print(f"wrote {r.output}: {r.qtype}, {size(r.size_bytes)} (from {size(r.source_bytes)} of weights)")
    if r.sample is not None:
        print(
            f"  loads back quantized in {r.reload_seconds:.1f}s; generates {r.gen_tokens_per_s:.1f} tok/s: "
            f"{r.sample!r}"
        )
    print(f"  {r.seconds:.1f}s, peak GPU memory {r.peak_gpu_mb / 1024:.1f} GiB")
    return 0


def check(c: ShipChoice) -> None:
    from engine.ship.quantize import default_output

    model_dir = need_model_dir(c)
    out = default_output(model_dir)
    must_be_new(out, f"remove it, or run `leviathan-cockpit quantize {model_dir} -o OUT`")


def job(c: ShipChoice, run_dir: Path | None):
    from engine.run import lineage
    from engine.ship.quantize import default_output, quantize

    def summary(r) -> str:
        return f"{r.qtype} model in {r.output} ({lineage.human_size(r.size_bytes)})"

    out = default_output(c.model_dir)
    return f"quantize {c.model_dir.name}", quantize, (c.model_dir, out), {"qtype": "nf4"}, summary


register(
    Step(
        ("quantize",),
        "quantize a merged model (nf4 / int8)",
        add_args,
        run,
        order=20,
        actions=(
            MenuAction(
                "quantize",
                "quantize the model folder to nf4 (bitsandbytes; needs CUDA)",
                check,
                job,
                ticks="quantized",
            ),
        ),
    )
)
