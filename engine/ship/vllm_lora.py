"""One vLLM server for every kept checkpoint of a run: the base model with each LoRA adapter by name.

``vllm serve BASE --enable-lora --lora-modules NAME-STEP=checkpoint-STEP ... --max-lora-rank R``:
no merge, one copy of the base in GPU memory, and a request picks its checkpoint with
``"model": NAME-STEP`` (the base answers as ``NAME-base``). R is the adapters' rank (their
``adapter_config.json`` ``r``, the run's ``lora_r``) rounded up to a rank vLLM accepts; the run's
chat template goes with ``--chat-template`` (vLLM would otherwise use the base tokenizer's). The
argument names are the pinned vLLM's (engine/ship/vllm_args.py). QLoRA adapters are served on the
unquantized base, as ``merge`` does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import UserError
from engine.run import lineage
from engine.run.jobs import Progress, null_progress
from engine.run.rundir import RunDir, output_dir_of
from engine.ship.serve import VllmServe, curl_for, listen_args, ollama_name, serve_command
from engine.ship.vllm_args import MAX_LORA_RANKS

MAX_LORAS = 4  # adapters in one batch: vLLM's default is 1 (one checkpoint at a time)


@dataclass
class LoraServe:
    serve: VllmServe
    base: str
    adapters: list[tuple[str, Path, int]]  # (served name, checkpoint, rank)
    max_lora_rank: int
    notes: list[str] = field(default_factory=list)


def kept_checkpoints(target: str | Path) -> tuple[list[Path], Path | None]:
    """(the complete checkpoints, oldest first; the run folder) for a run folder, an output_dir,
    one of its checkpoints, or a merged folder whose lineage names its run."""
    from engine.run.checkpoints import scan

    p = Path(target)
    if not p.is_dir():
        raise UserError(
            f"{target}: no such folder", "give a run folder (logs/RUN), its output_dir or a checkpoint"
        )
    run = None
    if RunDir(p).is_run():
        run, out = p, _output_dir(p)
    elif (p / "adapter_config.json").is_file():
        out = p.parent
    elif lineage.read_info(p).get("run_dir"):
        run = Path(lineage.read_info(p)["run_dir"])
        out = _output_dir(run)
    else:
        out = p
    complete, _ = scan(out) if out and Path(out).is_dir() else ([], [])
    if not complete:
        raise UserError(
            f"{target}: no complete LoRA checkpoint found{f' in {out}' if out else ''}",
            "give the run's folder (logs/RUN) or its output_dir once a checkpoint is saved",
        )
    if run is None:
        run = lineage.find_run_dir(complete[-1].path)
    return [c.path for c in complete], run


def _output_dir(run: Path) -> Path | None:
    from engine.run.events import read_events

    try:
        records = read_events(RunDir(run).events).records
    except OSError:
        records = []
    return output_dir_of(run, records)


def adapter_rank(checkpoint: Path) -> int:
    try:
        cfg = json.loads((checkpoint / "adapter_config.json").read_text())
    except (OSError, ValueError):
        raise UserError(f"{checkpoint}: no readable adapter_config.json", "use another checkpoint") from None
    return max([int(cfg.get("r") or 8), *map(int, (cfg.get("rank_pattern") or {}).values())])


def vllm_rank(rank: int) -> int:
    """The smallest ``--max-lora-rank`` vLLM accepts that holds ``rank``."""
    fits = [r for r in MAX_LORA_RANKS if r >= rank]
    if not fits:
        raise UserError(
            f"LoRA rank {rank}: vLLM serves adapters up to rank {MAX_LORA_RANKS[-1]}",
            "merge the checkpoint and serve the merged folder (leviathan-cockpit export vllm MERGED)",
        )
    return fits[0]


def vllm_lora_command(
    target: str | Path,
    *,
    port: int = 8000,
    host: str | None = None,
    max_model_len: int = 4096,
    dtype: str = "bfloat16",
    name: str | None = None,
    progress: Progress = null_progress,
) -> LoraServe:
    from engine.ship.merge import resolve_base_for

    ckpts, run = kept_checkpoints(target)
    base = resolve_base_for(ckpts[-1], None)
    name = name or (ollama_name(run) if run else ollama_name(ckpts[-1].parent))
    adapters = [(f"{name}-{_step(c)}", c.resolve(), adapter_rank(c)) for c in ckpts]
    rank = vllm_rank(max(r for _, _, r in adapters))
    args = [
        base,
        "--served-model-name",
        f"{name}-base",
        "--dtype",
        dtype,
        "--max-model-len",
        str(max_model_len),
    ]
    args += ["--enable-lora", "--max-loras", str(min(len(adapters), MAX_LORAS)), "--max-lora-rank", str(rank)]
    args += ["--lora-modules", *(_module(n, p, base) for n, p, _ in adapters)]
    notes = []
    template = ckpts[-1] / "chat_template.jinja"
    if template.is_file():
        args += ["--chat-template", str(template.resolve())]
        notes.append(f"chat template: the run's, from {template}")
    if any(lineage.checkpoint_meta(c).get("fingerprint", {}).get("adapter") == "qlora" for c in ckpts):
        notes.append("QLoRA adapters: served on the unquantized base (as `merge` does)")
    args += listen_args(host, port)
    progress(1.0, f"vLLM command for {len(adapters)} adapter(s) on {base}")
    serve = serve_command(args, curl_for(adapters[-1][0], host, port), adapters[-1][0])
    return LoraServe(serve, base, adapters, rank, notes)


def _step(checkpoint: Path) -> str:
    return checkpoint.name.removeprefix("checkpoint-")


def _module(name: str, path: Path, base: str) -> str:
    # vLLM reads an item with a comma as JSON (LoRAParserAction); a path with one needs that form.
    if "," in str(path) or "=" in name:
        return json.dumps({"name": name, "path": str(path), "base_model_name": base})
    return f"{name}={path}"
