"""``export gguf``: verified GGUF files for llama.cpp / Ollama and their Modelfile (engine/ship/gguf.py)."""

from __future__ import annotations

from pathlib import Path

from engine.cli.steps import (
    MenuAction,
    ShipChoice,
    Step,
    must_be_new,
    need_model_dir,
    print_ollama_try,
    quiet_transformers,
    register,
    size,
)
from engine.cli.steps import stderr_progress as progress


def add_args(g) -> None:
    g.add_argument(
        "source", metavar="CHECKPOINT_OR_MERGED", help="a LoRA checkpoint (merged first) or a merged folder"
    )
    g.add_argument("-o", "--output", metavar="DIR", help="folder for the .gguf files (default: MERGED-gguf)")
    g.add_argument(
        "--quant",
        nargs="+",
        default=["f16"],
        metavar="TYPE",
        help="f16 (default), q8_0, f32, bf16; q4_k_m, q5_k_m, q6_k with llama-cpp-python installed",
    )
    g.add_argument("--name", help="file stem and Ollama model name (default: the merged folder's name)")
    g.add_argument(
        "--system", help="the Modelfile's SYSTEM prompt (default: the run config's export.system_prompt)"
    )
    g.add_argument("--config", help="take SYSTEM and parameters from this config's `export:` section")
    g.add_argument(
        "--pre-tokenizer",
        metavar="NAME",
        help="llama.cpp's pre-tokenizer for a tokenizer it does not recognise",
    )
    g.add_argument("--no-modelfile", action="store_true", help="write only the .gguf files")
    t = g.add_mutually_exclusive_group()
    t.add_argument(
        "--template", metavar="FILE", help="the Modelfile's TEMPLATE (Ollama Go template) as it is"
    )
    t.add_argument("--no-template", action="store_true", help="no TEMPLATE: leave it to Ollama's detection")
    g.add_argument("--force", action="store_true", help="replace .gguf files of the same name")


def run(args) -> int:
    from pathlib import Path

    from engine.errors import UserError
    from engine.ship.gguf import check_quants, missing_source

    # Said together, before anything is imported or merged: the source is not there, a --quant
    # is not a type this writes, the extra or a quantizer is missing.
    problems = [e for e in [missing_source(Path(args.source))] if e is not None]
    try:
        check_quants(args.quant)
    except UserError as e:
        problems.append(e)
    if problems:
        raise UserError.several(problems, "problems with this export")
    quiet_transformers()
    from engine.ship.gguf import export_gguf

    r = export_gguf(
        args.source,
        args.output,
        quants=args.quant,
        name=args.name,
        system=args.system,
        config=args.config,
        pre_tokenizer=args.pre_tokenizer,
        force=args.force,
        modelfile=not args.no_modelfile,
        template=args.template,
        no_template=args.no_template,
        progress=progress,
    )
    if r.merged_now:
        print(f"merged the checkpoint into {r.merged}")
    print(f"wrote {r.output} ({r.arch}) in {r.seconds:.1f}s:")
    for f in r.files:
        print(f"  {f.path.name}  {size(f.size_bytes)}  {f.seconds:.1f}s")
        print(f"    check: {f.check.summary()}: ok")
        if f.runtime is not None:
            print(f"    {f.runtime.summary()}: ok")
            for note in f.runtime.notes:
                print(f"      note: {note}")
    for note in r.notes:
        print(f"  note: {note}")
    if r.modelfile is not None:
        print(f"  {r.modelfile.path} (FROM {r.modelfile.text.splitlines()[1][5:]})")
        for note in r.modelfile.notes:
            print(f"    {note}")
        print_ollama_try(r.modelfile)
    return 0


def check(c: ShipChoice) -> None:
    from engine.ship import gguf

    model_dir = need_model_dir(c)
    quants = gguf.check_quants(gguf.menu_quants())  # the [gguf] extra, said before the job
    for path in gguf.planned_files(model_dir, quants).values():
        must_be_new(path, f"remove it, or run `leviathan-cockpit export gguf {model_dir} --force`")


def job(c: ShipChoice, run_dir: Path | None):
    from engine.run import lineage
    from engine.ship.gguf import export_gguf, menu_quants

    def summary(r) -> str:
        files = ", ".join(f"{f.path.name} {lineage.human_size(f.size_bytes)}" for f in r.files)
        create = f"; {r.modelfile.create_command}" if r.modelfile else ""
        ran = " and run by llama.cpp" if all(f.runtime for f in r.files) else ""
        return f"{files}, every tensor verified{ran}{create}"

    return f"gguf {c.model_dir.name}", export_gguf, (c.model_dir,), {"quants": menu_quants()}, summary


register(
    Step(
        ("export", "gguf"),
        "write GGUF files for llama.cpp / Ollama (each verified) and a Modelfile",
        add_args,
        run,
        order=25,
        title="GGUF files (llama.cpp, Ollama)",
        actions=(
            MenuAction(
                "gguf",
                "export: GGUF files for llama.cpp / Ollama (verified) and their Modelfile",
                check,
                job,
            ),
        ),
    )
)
