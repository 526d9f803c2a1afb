"""The post-training commands: ``merge``, ``quantize``, ``export gguf|ollama|vllm``, ``push``.

Only argument parsing and printing live here (stdlib at the top, so ``--help`` stays fast);
the work is in engine/ship/merge.py, quantize.py, gguf.py, serve.py, vllm_lora.py and publish.py,
whose functions the cockpit runs as background jobs (engine/run/jobs.py) with the same arguments.
"""

from __future__ import annotations

import argparse
import sys

NEXT_STEPS = "next: `leviathan-cockpit quantize {out} -o {out}-nf4`, `leviathan-cockpit export vllm {out}`"


def _stderr_progress(fraction: float, message: str) -> None:
    print(f"[{fraction * 100:3.0f}%] {message}", file=sys.stderr, flush=True)


def _quiet_transformers() -> None:
    """Our progress lines replace the libraries' bars and advice on the terminal.

    Environment only, read when transformers is first imported: a command that stops at a
    bad argument never pays for importing it.
    """
    import os
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", category=FutureWarning)


def _size(n: int) -> str:
    from engine.run.lineage import human_size

    return human_size(n)


# -- merge ---------------------------------------------------------------------------------


def add_merge_args(p: argparse.ArgumentParser) -> None:
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


def merge_main(args) -> int:
    _quiet_transformers()
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
        progress=_stderr_progress,
    )
    print(f"merged {r.checkpoint} into {r.base}")
    print(f"  wrote {r.output}: {r.shards} shard(s), {_size(r.size_bytes)}, {r.dtype} on {r.device}")
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


# -- quantize ------------------------------------------------------------------------------


def add_quantize_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", metavar="DIR", help="a merged model folder")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="the quantized model folder to write")
    p.add_argument("--type", dest="qtype", choices=["nf4", "int8"], default="nf4")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.add_argument("--no-verify", action="store_true", help="skip loading OUT back and generating")


def quantize_main(args) -> int:
    from engine.ship.quantize import check_model_dir, require_cuda_bnb

    check_model_dir(args.model_dir)
    require_cuda_bnb(args.qtype)
    _quiet_transformers()
    from engine.ship.quantize import quantize

    r = quantize(
        args.model_dir,
        args.output,
        qtype=args.qtype,
        force=args.force,
        verify=not args.no_verify,
        progress=_stderr_progress,
    )
    print(f"wrote {r.output}: {r.qtype}, {_size(r.size_bytes)} (from {_size(r.source_bytes)} of weights)")
    if r.sample is not None:
        print(
            f"  loads back quantized in {r.reload_seconds:.1f}s; generates {r.gen_tokens_per_s:.1f} tok/s: "
            f"{r.sample!r}"
        )
    print(f"  {r.seconds:.1f}s, peak GPU memory {r.peak_gpu_mb / 1024:.1f} GiB")
    return 0


# -- export --------------------------------------------------------------------------------


def add_export_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="target", metavar="TARGET", required=True)
    o = sub.add_parser("ollama", help="write an Ollama Modelfile for a merged model")
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
    add_gguf_args(sub)
    v = sub.add_parser("vllm", help="print (or --run) the vLLM OpenAI-server command(s)")
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


def add_gguf_args(sub) -> None:
    g = sub.add_parser("gguf", help="write GGUF files for llama.cpp / Ollama (each verified) and a Modelfile")
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


def gguf_main(args) -> int:
    from engine.ship.gguf import check_quants

    check_quants(args.quant)  # a missing extra or quantizer says so before anything is imported or merged
    _quiet_transformers()
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
        progress=_stderr_progress,
    )
    if r.merged_now:
        print(f"merged the checkpoint into {r.merged}")
    print(f"wrote {r.output} ({r.arch}) in {r.seconds:.1f}s:")
    for f in r.files:
        print(f"  {f.path.name}  {_size(f.size_bytes)}  {f.seconds:.1f}s")
        print(f"    check: {f.check.summary()}: ok")
    for note in r.notes:
        print(f"  note: {note}")
    if r.modelfile is not None:
        print(f"  {r.modelfile.path} (FROM {r.modelfile.text.splitlines()[1][5:]})")
        for note in r.modelfile.notes:
            print(f"    {note}")
        print("create and try it:")
        print(f"  {r.modelfile.create_command}")
        print(f'  ollama run {r.modelfile.name} "Who are you?"')
    return 0


def export_main(args) -> int:
    if args.target == "gguf":
        return gguf_main(args)
    if args.target == "ollama":
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
        print("create and try it:")
        print(f"  {m.create_command}")
        print(f'  ollama run {m.name} "Who are you?"')
        return 0
    return vllm_main(args)


def vllm_main(args) -> int:
    """The merged folder's command, and the adapters' command where the run's checkpoints are known."""
    from pathlib import Path

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


# -- push ----------------------------------------------------------------------------------


def add_push_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", metavar="DIR", help="a merged (or quantized) model folder")
    p.add_argument("--repo-id", required=True, metavar="USER/NAME", help="the Hub model repository")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--dry-run", action="store_true", help="list what would be sent and print the card")
    p.add_argument("--run-dir", help="the run folder for the model card (default: found from DIR)")
    p.add_argument("--message", help="the commit message")
    p.add_argument("--new-card", action="store_true", help="replace a README.md that was not generated")


def push_main(args) -> int:
    from engine.ship.publish import push

    r = push(
        args.model_dir,
        args.repo_id,
        private=args.private,
        dry_run=args.dry_run,
        run_dir=args.run_dir,
        message=args.message,
        new_card=args.new_card,
        progress=_stderr_progress if not args.dry_run else _silent,
    )
    head = "would upload" if r.dry_run else "uploaded"
    print(
        f"{head} {len(r.files)} files, {_size(r.total_bytes)}, to {args.repo_id}"
        + (" (private)" * args.private)
    )
    width = max(len(n) for n, _ in r.files)
    for name, size in r.files:
        print(f"  {name:<{width}}  {_size(size):>10}")
    for note in r.notes:
        print(f"note: {note}")
    if r.dry_run:
        print("\n--- README.md (model card) ---")
        print(r.card)
    else:
        print(f"done: {r.url}")
    return 0


def _silent(fraction: float, message: str) -> None:
    pass
