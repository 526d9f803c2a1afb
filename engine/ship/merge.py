"""Merge a LoRA checkpoint into its base model: a plain model folder for transformers, vLLM, lm-eval.

The base loads unquantized (bf16 on a GPU, fp32 on CPU), also for QLoRA adapters: their
deltas go into the full-precision base, not into a 4-bit copy. The folder gets the merged
weights in safetensors shards, the tokenizer with the chat template the run trained with,
the generation config (its end-of-turn token included), and for vision-language bases the
untouched vision tower and the processor files. It is written under a temporary name and
renamed at the end: a crash or a kill never leaves a half-written model behind.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from engine import faults
from engine.errors import UserError
from engine.run import lineage
from engine.run.jobs import Progress, null_progress
from engine.ship.outfolder import check_output, replace

PROCESSOR_FILES = ("preprocessor_config.json", "video_preprocessor_config.json", "processor_config.json")
PROBE = [{"role": "user", "content": "Who are you?"}]


@dataclass
class MergeResult:
    output: Path
    checkpoint: Path
    base: str
    dtype: str
    device: str
    qlora: bool
    vision: bool
    seconds: float
    size_bytes: int
    shards: int
    max_abs_diff: float | None
    peak_gpu_mb: float | None
    run_dir: Path | None


def check_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder, or a UserError saying what the path is instead."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{path}: no such folder", "give a checkpoint-N folder written by training")
    if not p.is_dir():
        raise UserError(f"{path}: not a folder", "give a checkpoint-N folder written by training")
    if not (p / "adapter_config.json").is_file():
        if (p / "config.json").is_file():
            raise UserError(
                f"{path}: a model folder, not a LoRA checkpoint (no adapter_config.json): nothing to merge",
                "give a checkpoint-N folder; a merged folder is used as it is",
            )
        raise UserError(
            f"{path}: not a LoRA checkpoint (no adapter_config.json)",
            "give a checkpoint-N folder from the run's output_dir",
        )
    if not any((p / w).is_file() for w in ("adapter_model.safetensors", "adapter_model.bin")):
        raise UserError(
            f"{path}: the adapter weights (adapter_model.safetensors) are missing; the checkpoint is incomplete",
            "use another checkpoint (`leviathan-cockpit` lists the complete ones)",
        )
    return p


def default_output(checkpoint: str | Path) -> Path:
    """Where a merge goes when nobody says: ``<output_dir>-merged``, beside the checkpoints (where
    the checklist looks), or ``<output_dir>-merged-checkpoint-N`` once that is taken."""
    ckpt = Path(checkpoint)
    first = ckpt.parent.with_name(f"{ckpt.parent.name}-merged")
    return first if not first.exists() else first.with_name(f"{first.name}-{ckpt.name}")


def resolve_base_for(checkpoint: Path, base: str | None) -> str:
    """The base model to merge into: --base, else the adapter's record, else the run's."""
    from engine.model.loading import adapter_base
    from engine.model.model import resolve_base

    if base:
        return _must_exist(resolve_base(base), "--base")
    recorded = adapter_base(checkpoint)
    meta_base = lineage.checkpoint_meta(checkpoint).get("base_model")
    for name in (recorded, meta_base):
        if name and (not _looks_local(name) or Path(resolve_base(name)).exists()):
            return resolve_base(name)
    raise UserError(
        f"{checkpoint}: its base model {recorded or meta_base!r} (adapter_config.json base_model_name_or_path) "
        "does not exist on this machine",
        "pass --base with the folder (or cached hub id) of the model the checkpoint was trained on",
    )


def _looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") != 1


def _must_exist(name: str, flag: str) -> str:
    if _looks_local(name) and not Path(name).expanduser().exists():
        raise UserError(
            f"{flag} {name}: no such folder", "give a model folder or a hub id in the local cache"
        )
    return name


def base_folder(base: str) -> Path | None:
    """The local folder of a base model (a path, or its snapshot in the Hugging Face cache)."""
    p = Path(base).expanduser()
    if p.is_dir():
        return p
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(base, local_files_only=True))
    except Exception:  # not cached, not a repo id: there is simply no folder to copy from
        return None


def pick_device_dtype(device: str, dtype: str):
    import torch

    cuda = torch.cuda.is_available()
    if device == "auto":
        device = "cuda" if cuda else "cpu"
    if device == "cuda" and not cuda:
        raise UserError("--device cuda: this machine has no CUDA GPU", "use --device cpu (fp32) or auto")
    if dtype == "auto":
        dtype = "bf16" if device == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    return device, dtype, torch_dtype


def is_qlora(checkpoint: Path) -> bool:
    fp = lineage.checkpoint_meta(checkpoint).get("fingerprint") or {}
    return fp.get("adapter") == "qlora" or bool(fp.get("load_in_4bit")) or bool(fp.get("load_in_8bit"))


def load_full_base(base: str, torch_dtype, device: str, trust_remote_code: bool = False):
    """The base model, unquantized, on ``device``; the causal-LM or image-text-to-text class."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    from engine.model.model import is_vision_language, load_model_config

    cfg = load_model_config(base, trust_remote_code)
    auto = AutoModelForImageTextToText if is_vision_language(cfg) else AutoModelForCausalLM
    kwargs = dict(dtype=torch_dtype, local_files_only=True, trust_remote_code=trust_remote_code)
    if device == "cuda":
        import torch

        kwargs["device_map"] = {"": torch.cuda.current_device()}
    return auto.from_pretrained(base, **kwargs), is_vision_language(cfg)


def load_checkpoint_tokenizer(checkpoint: Path, base: str):
    """The tokenizer saved with the checkpoint (the chat template the run trained with)."""
    from transformers import AutoTokenizer

    for source in (checkpoint, base):
        try:
            return AutoTokenizer.from_pretrained(str(source), local_files_only=True)
        except (OSError, ValueError):
            continue
    raise UserError(f"{checkpoint}: no tokenizer in the checkpoint nor in {base}", "pass --base")


def probe_ids(tokenizer, device: str):
    import torch

    if tokenizer.chat_template:
        ids = tokenizer.apply_chat_template(PROBE, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
    else:
        ids = tokenizer(PROBE[0]["content"])["input_ids"]
    return torch.tensor([list(ids)], device=device)


def merge(
    checkpoint: str | Path,
    output: str | Path,
    *,
    base: str | None = None,
    dtype: str = "auto",
    device: str = "auto",
    max_shard_size: str = "5GB",
    force: bool = False,
    verify: bool = True,
    run_dir: str | Path | None = None,
    progress: Progress = null_progress,
) -> MergeResult:
    """Merge ``checkpoint`` into its base and write a plain model folder at ``output``."""
    t0 = time.time()
    progress(0.0, "checking the checkpoint")
    ckpt = check_checkpoint(checkpoint)
    base_name = resolve_base_for(ckpt, base)
    inputs = [ckpt] + ([Path(base_name)] if Path(base_name).exists() else [])
    out = check_output(output, force, inputs)
    from engine.model.model import load_model_config

    load_model_config(base_name)  # a clear message for a base that is not there
    import torch

    run = lineage.find_run_dir(ckpt, run_dir)
    trust = bool(lineage.run_config(run).get("trust_remote_code", False))
    device, dtype, torch_dtype = pick_device_dtype(device, dtype)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    progress(0.05, f"loading the base {base_name} ({dtype}, {device})")
    tokenizer = load_checkpoint_tokenizer(ckpt, base_name)
    model, vision = load_full_base(base_name, torch_dtype, device, trust)
    progress(0.4, f"loading the adapter {ckpt}")
    model = _with_adapter(model, ckpt, base_name)
    merged, diff = _merge_verified(model, tokenizer, ckpt, device, verify, progress)
    _fix_generation_config(merged, tokenizer)
    size = sum(p.numel() * p.element_size() for p in merged.parameters())
    _check_disk(out, size)

    progress(0.55, f"writing {lineage.human_size(size)} of safetensors shards")
    info = _merged_info(ckpt, base_name, run, dtype, vision, diff)
    peak = _write_folder(merged, tokenizer, out, base_name, info, max_shard_size, device, progress)
    files = lineage.folder_files(out)
    result = MergeResult(
        output=out,
        checkpoint=ckpt,
        base=base_name,
        dtype=dtype,
        device=device,
        qlora=is_qlora(ckpt),
        vision=vision,
        seconds=time.time() - t0,
        size_bytes=sum(s for _, s in files),
        shards=sum(1 for n, _ in files if n.endswith(".safetensors")),
        max_abs_diff=diff,
        peak_gpu_mb=peak,
        run_dir=run,
    )
    lineage.record_step(
        run,
        "merge",
        output=str(out.resolve()),
        checkpoint=str(ckpt.resolve()),
        seconds=round(result.seconds, 1),
    )
    progress(1.0, f"merged into {out}")
    return result


def _merged_info(ckpt: Path, base_name: str, run: Path | None, dtype: str, vision, diff) -> dict:
    """What the merged folder's lineage file says (``created_at`` is added as it is written)."""
    return {
        "kind": "merged",
        "checkpoint": str(ckpt.resolve()),
        "step": lineage.checkpoint_meta(ckpt).get("step"),
        "base_model": base_name,
        "base_model_config": lineage.checkpoint_meta(ckpt).get("base_model"),
        "run_dir": str(run) if run else None,
        "adapter": "qlora" if is_qlora(ckpt) else "lora",
        "dtype": dtype,
        "vision": vision,
        "max_abs_logit_diff": diff,
    }


def _with_adapter(model, ckpt: Path, base_name: str):
    from peft import PeftModel

    try:
        model = PeftModel.from_pretrained(model, str(ckpt))
    except (RuntimeError, ValueError, KeyError) as e:
        raise UserError(
            f"{ckpt}: this adapter does not fit base model {base_name} ({str(e).splitlines()[0][:200]})",
            "pass --base with the model the checkpoint was trained on",
        ) from None
    model.eval()
    return model


def _merge_verified(model, tokenizer, ckpt: Path, device: str, verify: bool, progress: Progress):
    """The merged model, and (``verify``) the largest logit difference it makes on a probe."""
    import torch

    ids = probe_ids(tokenizer, device) if verify else None
    with torch.no_grad():
        before = model(input_ids=ids).logits.float() if verify else None
        progress(0.5, "merging the adapter into the weights")
        try:
            merged = model.merge_and_unload(safe_merge=True, progressbar=False)
        except ValueError as e:
            raise UserError(
                f"{ckpt}: merging gives non-finite weights ({e}); the adapter is broken (diverged training?)",
                "merge an earlier checkpoint",
            ) from None
        diff = (merged(input_ids=ids).logits.float() - before).abs().max().item() if verify else None
    del before
    return merged, diff


def _write_folder(
    merged, tokenizer, out: Path, base_name: str, info: dict, max_shard_size: str, device: str, progress
) -> float | None:
    """Write the model folder beside ``out`` and swap it in whole; the peak GPU memory (MiB)."""
    import torch

    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        merged.save_pretrained(tmp, max_shard_size=max_shard_size)
        faults.in_phase("merge")
        tokenizer.save_pretrained(tmp)
        folder = base_folder(base_name)
        if folder is not None:
            copy_processor_files(folder, tmp)
        progress(0.95, "syncing to disk")
        peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
        from engine.run.checkpoints import file_digests

        # size and sha256 of each file: export, push and quantize check them (quantize.check_model_dir)
        lineage.write_info(tmp, {**info, "files": file_digests(tmp), "created_at": time.time()})
        readable_by_umask(tmp)
        lineage.fsync_tree(tmp)
        replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return peak


def _fix_generation_config(model, tokenizer) -> None:
    """Generation stops at the chat template's end of turn, whatever the base's config said."""
    gen = getattr(model, "generation_config", None)
    eos = tokenizer.eos_token_id
    if gen is None or eos is None:
        return
    current = gen.eos_token_id
    ids = list(current) if isinstance(current, (list, tuple)) else ([] if current is None else [current])
    if eos not in ids:
        ids.append(eos)
    gen.eos_token_id = ids[0] if len(ids) == 1 else ids
    if gen.pad_token_id is None and tokenizer.pad_token_id is not None:
        gen.pad_token_id = tokenizer.pad_token_id


def copy_processor_files(src: Path, dst: Path) -> list[str]:
    """Image/video processor configs of a vision-language base, beside the merged weights.

    The chat template is not taken from the base: the tokenizer written beside it carries
    the one the run trained with.
    """
    copied = []
    for name in PROCESSOR_FILES:
        f = src / name
        if not f.is_file() or (dst / name).exists():
            continue
        if name == "processor_config.json":
            data = json.loads(f.read_text())
            data.pop("chat_template", None)
            (dst / name).write_text(json.dumps(data, indent=2) + "\n")
        else:
            shutil.copyfile(f, dst / name)
        copied.append(name)
    return copied


def _check_disk(out: Path, size: int) -> None:
    free = shutil.disk_usage(out.resolve().parent).free
    need = int(size * 1.05) + 50_000_000
    if free < need:
        raise UserError(
            f"{out.resolve().parent}: {lineage.human_size(free)} free, the merged model needs about "
            f"{lineage.human_size(need)}",
            "free some disk space or write the output to another disk",
        )


def readable_by_umask(folder: Path) -> None:
    """Files as the umask says (644 under the usual 022): safetensors writes its files 600, so a
    merged model shared with a server or another user would not load."""
    mask = os.umask(0)
    os.umask(mask)
    for p in Path(folder).rglob("*"):
        if p.is_file() and not p.is_symlink():
            os.chmod(p, 0o666 & ~mask)
