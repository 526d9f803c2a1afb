"""``export ollama``: an Ollama Modelfile for a merged model (engine/ship/serve.py)."""

from __future__ import annotations

from pathlib import Path

from engine.cli.steps import MenuAction, ShipChoice, Step, need_model_dir, print_ollama_try, register


def add_args(o) -> None:
    o.add_argument("model_dir", metavar="DIR", help="a merged model folder")
    o.add_argument(
        "-o", "--output", metavar="FILE", help="where to write the Modelfile (default: DIR/Modelfile)"
    )
    o.add_argument("--name", help="the Ollama model name (default: DIR's name)")
    o.add_argument("--system", help="the SYSTEM prompt (default: the run config's export.system_prompt)")
    o.add_argument("--config", help="take SYSTEM and parameters from this config's `export:` section")
    o.add_argument("--temperature", type=float, help="default 0.7")
    o.add_argument("--top-p", type=float, help="default 0.9")
    o.add_argument("--num-ctx", type=int, help="default 4096")
    t = o.add_mutually_exclusive_group()
    t.add_argument("--template", metavar="FILE", help="an Ollama (Go) TEMPLATE to use as it is")
    t.add_argument("--no-template", action="store_true", help="no TEMPLATE: leave it to Ollama's detection")


def run(args) -> int:
    from engine.ship.serve import write_modelfile

    m = write_modelfile(
        args.model_dir,
        output=args.output,
        name=args.name,
        system=args.system,
        config=args.config,
        template_file=args.template,
        no_template=args.no_template,
        temperature=args.temperature,
        top_p=args.top_p,
        num_ctx=args.num_ctx,
    )
    print(f"wrote {m.path}")
    for note in m.notes:
        print(f"  {note}")
    print_ollama_try(m)
    return 0


def check(c: ShipChoice) -> None:
    need_model_dir(c)


def job(c: ShipChoice, run_dir: Path | None):
    from engine.ship.serve import write_modelfile

    return (
        f"ollama {c.model_dir.name}",
        write_modelfile,
        (c.model_dir,),
        {},
        lambda m: f"wrote {m.path}; {m.create_command}",
    )


register(
    Step(
        ("export", "ollama"),
        "write an Ollama Modelfile for a merged model",
        add_args,
        run,
        order=30,
        title="Ollama Modelfile",
        actions=(
            MenuAction("ollama", "export: write an Ollama Modelfile into the model folder", check, job),
        ),
    )
)
