"""Serving a merged model: an Ollama Modelfile, and the vLLM OpenAI-server command.

The Modelfile's TEMPLATE is the model's own chat template (the one the run trained with),
translated into Ollama's Go template syntax by engine/ship/ollama_template.py and checked there
by rendering conversations both ways; for a template it cannot translate the user gives a
TEMPLATE file or leaves the template to Ollama's own detection, explicitly.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import UserError
from engine.run import lineage
from engine.run.jobs import Progress, null_progress
from engine.ship.ollama_template import (
    chat_template_of,
    check_translation,
    jinja_renderer,
    template_family,
    translate,
)

# The guide's serving defaults.
DEFAULTS = {"temperature": 0.7, "top_p": 0.9, "num_ctx": 4096}


@dataclass
class Modelfile:
    path: Path
    text: str
    name: str
    family: str | None
    create_command: str
    notes: list[str] = field(default_factory=list)


def ollama_name(model_dir: Path) -> str:
    name = re.sub(r"[^a-z0-9._-]+", "-", model_dir.resolve().name.lower()).strip("-.")
    return name or "leviathan"


def _quote(text: str) -> str:
    if '"""' in text:
        raise UserError('the SYSTEM prompt contains \'"""\', which a Modelfile cannot hold', "rephrase it")
    return f'"""{text}"""' if ("\n" in text or '"' in text) else f'"{text}"'


def system_prompt_for(
    model_dir: Path, system: str | None, config: str | Path | None
) -> tuple[str | None, str]:
    """The SYSTEM prompt and where it came from: --system, --config, or the run's config."""
    if system is not None:
        return system or None, "--system"
    if config:
        from engine.config.config import load_config

        cfg, _ = load_config(config)
        return cfg.export.system_prompt, str(config)
    run_dir = lineage.read_info(model_dir).get("run_dir")
    section = lineage.run_config(run_dir).get("export") or {}
    if section.get("system_prompt"):
        return section["system_prompt"], f"{run_dir}/config.yaml"
    return None, ""


def serving_params(model_dir: Path, config: str | Path | None, **over) -> dict:
    params = dict(DEFAULTS)
    if config:
        from engine.config.config import load_config

        cfg, _ = load_config(config)
        section = cfg.export.model_dump()
    else:
        section = lineage.run_config(lineage.read_info(model_dir).get("run_dir")).get("export") or {}
    params.update({k: section[k] for k in DEFAULTS if section.get(k) is not None})
    params.update({k: v for k, v in over.items() if v is not None})
    return params


def write_modelfile(
    model_dir: str | Path,
    *,
    output: str | Path | None = None,
    name: str | None = None,
    system: str | None = None,
    config: str | Path | None = None,
    template_file: str | Path | None = None,
    no_template: bool = False,
    temperature: float | None = None,
    top_p: float | None = None,
    num_ctx: int | None = None,
    from_file: str | Path | None = None,
    progress: Progress = null_progress,
) -> Modelfile:
    """A Modelfile for ``model_dir`` (its FROM: the folder, or ``from_file``, a GGUF made from it)."""
    from engine.ship.quantize import check_model_dir, model_config

    src = check_model_dir(model_dir)
    cfg = model_config(src)
    quant = cfg.get("quantization_config")
    if quant:
        raise UserError(
            f"{model_dir}: a bitsandbytes-quantized folder ({quant.get('quant_method', '?')}); Ollama imports "
            "unquantized safetensors",
            "point at the merged folder, and let Ollama quantize: ollama create NAME --quantize q4_K_M -f Modelfile",
        )
    notes: list[str] = []
    path = Path(output) if output else src / "Modelfile"
    if path.is_dir():
        path = path / "Modelfile"
    name = name or ollama_name(src)
    family, go_template, stops = _ollama_template(src, template_file, no_template, notes)
    sys_prompt, sys_from = system_prompt_for(src, system, config)
    if sys_prompt:
        notes.append(f"SYSTEM from {sys_from}")
    else:
        notes.append(
            "no SYSTEM prompt (none in the run's config `export.system_prompt`; give one with --system)"
        )
    params = serving_params(src, config, temperature=temperature, top_p=top_p, num_ctx=num_ctx)
    if "vision_config" in cfg:
        notes.append(
            "a vision-language model: if `ollama create` cannot import this architecture from safetensors, "
            "convert it to GGUF with llama.cpp and point FROM at the .gguf"
        )
    if family is not None and not template_file and not no_template:
        check_translation(src, go_template, jinja_renderer(src))
    text = _modelfile_text(
        Path(from_file) if from_file else src, path, go_template, sys_prompt, params, stops
    )
    lineage.write_text_atomic(path, text)
    folder = path.resolve().parent
    command = f"cd {shlex.quote(str(folder))} && ollama create {name} -f {shlex.quote(path.name)}"
    lineage.record_step(
        lineage.read_info(src).get("run_dir"),
        "export_ollama",
        modelfile=str(path.resolve()),
        FROM=str(from_file or src),
    )
    progress(1.0, f"wrote {path}")
    return Modelfile(path, text, name, family, command, notes)


def _ollama_template(
    src: Path, template_file: str | Path | None, no_template: bool, notes: list[str]
) -> tuple[str | None, str | None, list[str]]:
    """(the model's template family, the Go TEMPLATE or None, its stop strings); says where the
    TEMPLATE came from in ``notes``."""
    jinja = chat_template_of(src)
    family = template_family(jinja)  # None where there is no template or no family for it
    if template_file:
        try:
            go_template = Path(template_file).read_text()
        except OSError as e:
            raise UserError(
                f"--template {template_file}: cannot read it ({e.strerror})", "check the path"
            ) from None
        notes.append(f"TEMPLATE from {template_file}")
        return family, go_template, []
    if no_template:
        notes.append("no TEMPLATE: Ollama uses the template it detects when it imports the model")
        return family, None, []
    if family is None:
        what = (
            "has no chat template"
            if not jinja
            else "has a chat template that is not ChatML, Llama 3 or Gemma"
        )
        raise UserError(
            f"{src}: the model {what}, so it cannot be translated into Ollama's TEMPLATE",
            "give one with --template FILE (Ollama Go template syntax), or --no-template to leave it to "
            "Ollama's own detection",
        )
    go_template, stops, adapted = translate(family, jinja_renderer(src))
    notes.append(
        f"TEMPLATE translated from the model's {family} chat template" + "".join(f"; {a}" for a in adapted)
    )
    return family, go_template, stops


def _modelfile_text(
    src: Path, path: Path, go_template: str | None, sys_prompt: str | None, params: dict, stops: list[str]
) -> str:
    # Ollama resolves a relative FROM against the Modelfile's folder.
    from_path = os.path.relpath(src.resolve(), path.resolve().parent)
    lines = [
        f"# Written by leviathan-cockpit export {'gguf' if src.suffix == '.gguf' else 'ollama'}",
        f"FROM {str(src.resolve()) if from_path.startswith('..') else from_path}",
    ]
    if go_template is not None:
        lines.append(f'TEMPLATE """{go_template}"""')
    if sys_prompt:
        lines.append(f"SYSTEM {_quote(sys_prompt)}")
    lines += [
        f"PARAMETER temperature {params['temperature']}",
        f"PARAMETER top_p {params['top_p']}",
        f"PARAMETER num_ctx {int(params['num_ctx'])}",
    ]
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    return "\n".join(lines) + "\n"


@dataclass
class VllmServe:
    argv: list[str]
    command: str
    curl: str
    name: str


def vllm_command(
    model_dir: str | Path,
    *,
    port: int = 8000,
    host: str | None = None,
    max_model_len: int = 4096,
    dtype: str = "bfloat16",
    name: str | None = None,
    progress: Progress = null_progress,
) -> VllmServe:
    from engine.ship.quantize import check_model_dir, model_config

    src = check_model_dir(model_dir)
    name = name or ollama_name(src)
    args = [str(src), "--served-model-name", name, "--dtype", dtype, "--max-model-len", str(max_model_len)]
    quant = model_config(src).get("quantization_config") or {}
    if quant.get("quant_method") == "bitsandbytes":
        args += ["--quantization", "bitsandbytes"]
    args += listen_args(host, port)
    progress(1.0, f"vLLM command for {src}")
    return serve_command(args, curl_for(name, host, port), name)


def listen_args(host: str | None, port: int) -> list[str]:
    return (["--host", host] if host else []) + ["--port", str(port)]


def serve_command(args: list[str], curl: str, name: str) -> VllmServe:
    """``vllm serve ARGS`` (the pinned vLLM's entry point; engine/ship/vllm_args.py) and the argv that
    runs it with this Python."""
    from engine.ship.vllm_args import SERVE, check_flags

    check_flags(args)
    argv = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", *args]
    return VllmServe(argv, shlex.join([*SERVE, *args]), curl, name)


def curl_for(model: str, host: str | None, port: int) -> str:
    body = json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "Who are you?"}], "max_tokens": 256}
    )
    return (
        f"curl http://{host or 'localhost'}:{port}/v1/chat/completions \\\n"
        '  -H "Content-Type: application/json" \\\n'
        f"  -d {shlex.quote(body)}"
    )


def exec_vllm(serve: VllmServe) -> None:
    """Replace this process with the vLLM server (never returns)."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise UserError("vLLM is not installed in this environment", "pip install vllm (on the GPU machine)")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, serve.argv)
