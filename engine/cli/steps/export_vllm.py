"""``export vllm``: the vLLM OpenAI-server command for a merged model (engine/ship/serve.py), and one
server with every kept checkpoint as a LoRA adapter (engine/ship/vllm_lora.py)."""

from __future__ import annotations

from pathlib import Path

from engine.cli.steps import MenuAction, ShipChoice, Step, need_model_dir, register


def add_args(v) -> None:
    v.add_argument(
        "model_dir",
        metavar="DIR",
        help="a merged (or quantized) model folder; a run folder, output_dir or checkpoint: every kept "
        "checkpoint as a LoRA adapter of one server",
    )
    v.add_argument("--port", type=int, default=8000)
    v.add_argument("--host", help="address to listen on (vLLM's default when not given)")
    v.add_argument("--max-model-len", type=int, default=4096)
    v.add_argument("--dtype", default="bfloat16")
    v.add_argument("--name", help="the served model name (default: DIR's name)")
    v.add_argument("--run", action="store_true", help="start the server now (replaces this process)")


def run(args) -> int:
    """The merged folder's command, and the adapters' command where the run's checkpoints are known."""
    from engine.errors import UserError
    from engine.ship.serve import exec_vllm, vllm_command
    from engine.ship.vllm_lora import vllm_lora_command

    opts = dict(
        port=args.port, host=args.host, max_model_len=args.max_model_len, dtype=args.dtype, name=args.name
    )
    merged = (Path(args.model_dir) / "config.json").is_file()
    s = vllm_command(args.model_dir, **opts) if merged else None
    try:
        lora = vllm_lora_command(args.model_dir, **opts)
    except UserError:
        if not merged:
            raise
        lora = None  # a merged folder without its run's checkpoints here: the merged command alone
    if s is not None:
        _print_serve("serve the merged model:", s)
    if lora is not None:
        names = ", ".join(n for n, _, _ in lora.adapters)
        _print_serve(f"serve every kept checkpoint as a LoRA adapter of {lora.base} ({names}):", lora.serve)
        for note in lora.notes:
            print(f"  note: {note}")
    if args.run:
        exec_vllm(s or lora.serve)
    return 0


def _print_serve(title: str, s) -> None:
    print(title)
    print(f"  {s.command}")
    print("smoke test (once the server says it is ready):")
    print("  " + s.curl.replace("\n", "\n  "))


def check(c: ShipChoice) -> None:
    need_model_dir(c)


def job(c: ShipChoice, run_dir: Path | None):
    from engine.ship.serve import vllm_command

    return f"vllm {c.model_dir.name}", vllm_command, (c.model_dir,), {}, lambda s: s.command


register(
    Step(
        ("export", "vllm"),
        "print (or --run) the vLLM OpenAI-server command(s)",
        add_args,
        run,
        order=40,
        title="vLLM server command",
        actions=(MenuAction("vllm", "export: the vLLM OpenAI-server command", check, job),),
    )
)
