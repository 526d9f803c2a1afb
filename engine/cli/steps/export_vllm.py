"""``export vllm``: the vLLM OpenAI-server command for a merged model (engine/ship/serve.py)."""

from __future__ import annotations

from pathlib import Path

from engine.cli.steps import MenuAction, ShipChoice, Step, need_model_dir, register


def add_args(v) -> None:
    v.add_argument("model_dir", metavar="DIR", help="a merged (or quantized) model folder")
    v.add_argument("--port", type=int, default=8000)
    v.add_argument("--host", help="address to listen on (vLLM's default when not given)")
    v.add_argument("--max-model-len", type=int, default=4096)
    v.add_argument("--dtype", default="bfloat16")
    v.add_argument("--name", help="the served model name (default: DIR's name)")
    v.add_argument("--run", action="store_true", help="start the server now (replaces this process)")


def run(args) -> int:
    from engine.ship.serve import exec_vllm, vllm_command

    s = vllm_command(
        args.model_dir,
        port=args.port,
        host=args.host,
        max_model_len=args.max_model_len,
        dtype=args.dtype,
        name=args.name,
    )
    print("serve:")
    print(f"  {s.command}")
    print("smoke test (once the server says it is ready):")
    print("  " + s.curl.replace("\n", "\n  "))
    if args.run:
        exec_vllm(s)
    return 0


def check(c: ShipChoice) -> None:
    need_model_dir(c)


def job(c: ShipChoice, run_dir: Path | None):
    from engine.ship.serve import vllm_command

    return f"vllm {c.model_dir.name}", vllm_command, (c.model_dir,), {}, lambda s: s.command


register(
    Step(
        ("export", "vllm"),
        "print (or --run) the vLLM OpenAI-server command",
        add_args,
        run,
        order=40,
        title="vLLM server command",
        actions=(MenuAction("vllm", "export: the vLLM OpenAI-server command", check, job),),
    )
)
