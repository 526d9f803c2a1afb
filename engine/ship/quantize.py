"""Quantize a merged model with bitsandbytes (nf4 with double quantization, or int8).

The result is a model folder whose ``config.json`` carries the ``quantization_config``:
``from_pretrained(OUT)`` loads it back quantized, with no extra arguments. bitsandbytes
quantizes on a CUDA GPU, so without one this says so and stops before touching anything.
The lm_head and a vision tower stay in bf16 (as in QLoRA training). The folder is checked
by loading it back and generating a few tokens before it is renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from engine.errors import UserError
from engine.run import lineage
from engine.run.jobs import Progress, null_progress

TYPES = ("nf4", "int8")


@dataclass
class QuantizeResult:
    output: Path
    source: Path
    qtype: str
    seconds: float
    size_bytes: int
    source_bytes: int
    reload_seconds: float | None
    sample: str | None
    gen_tokens_per_s: float | None
    peak_gpu_mb: float | None


def check_model_dir(path: str | Path) -> Path:
    """A plain (merged, unquantized) model folder, or a UserError saying what it is instead."""
    p = Path(path)
    if not p.is_dir():
        raise UserError(f"{path}: no such folder", "give the folder `leviathan-cockpit merge` wrote")
    if not (p / "config.json").is_file():
        if (p / "adapter_config.json").is_file():
            raise UserError(
                f"{path}: a LoRA checkpoint, not a merged model",
                f"merge it first: leviathan-cockpit merge {path} -o MERGED_DIR",
            )
        raise UserError(f"{path}: not a model folder (no config.json)", "give a merged model folder")
    from engine.run.checkpoints import verify_files

    # The weights as merge/quantize wrote them (size, sha256); the text files (config.json, the
    # tokenizer's) are left to hand edits.
    recorded = lineage.read_info(p).get("files") or {}
    weights = {k: v for k, v in recorded.items() if k.endswith((".safetensors", ".bin"))}
    problems = verify_files(p, weights)
    if problems:
        raise UserError(
            f"{path}: its files are not as written: " + "; ".join(problems[:5]),
            "merge (or quantize) again into a new folder; the checkpoint it came from is intact",
        )
    return p


def default_output(model_dir: str | Path, qtype: str = "nf4") -> Path:
    """``DIR-nf4`` beside the merged folder (the name the checklist and `merge`'s hint use)."""
    p = Path(model_dir)
    return p.with_name(f"{p.name}-{qtype}")


def model_config(path: Path) -> dict:
    try:
        return json.loads((path / "config.json").read_text())
    except ValueError as e:
        raise UserError(f"{path / 'config.json'}: not valid JSON ({e})", "re-run the merge") from None


def bnb_config(qtype: str):
    import torch
    from transformers import BitsAndBytesConfig

    from engine.model.model import VISION_PARTS

    skip = ["lm_head", *VISION_PARTS]
    if qtype == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
            llm_int8_skip_modules=skip,
        )
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)


def require_cuda_bnb(qtype: str) -> None:
    import torch

    if not torch.cuda.is_available():
        raise UserError(
            f"{qtype} quantization runs on an NVIDIA GPU with CUDA (bitsandbytes), and this machine has none",
            "run `leviathan-cockpit quantize` on the GPU machine; the merged folder itself runs anywhere",
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UserError(
            "bitsandbytes is not installed",
            "pip install 'leviathan-cockpit[gpu]' (or pip install bitsandbytes)",
        ) from None


def _auto_class(cfg: dict):
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    vision = "vision_config" in cfg or any(
        a.endswith("ForConditionalGeneration") for a in cfg.get("architectures") or []
    )
    return AutoModelForImageTextToText if vision else AutoModelForCausalLM


def quantize(
    model_dir: str | Path,
    output: str | Path,
    *,
    qtype: str = "nf4",
    force: bool = False,
    verify: bool = True,
    progress: Progress = null_progress,
) -> QuantizeResult:
    import torch

    from engine.run.checkpoints import file_digests
    from engine.ship.outfolder import check_output, replace

    t0 = time.time()
    src, cfg = _check_source(model_dir, qtype, progress)
    out = check_output(output, force, [src])
    require_cuda_bnb(qtype)
    info = lineage.read_info(src)
    trust = bool(lineage.run_config(info.get("run_dir")).get("trust_remote_code", False))
    auto = _auto_class(cfg)
    torch.cuda.reset_peak_memory_stats()

    progress(0.05, f"loading {src} and quantizing to {qtype}")
    tokenizer, model = _load_quantized(src, auto, qtype, trust)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    reload_s = sample = gen_tps = None
    try:
        progress(0.5, f"writing the {qtype} weights")
        _save_folder(model, tokenizer, src, tmp)
        del model  # the reload check below needs its GPU memory
        torch.cuda.empty_cache()
        if verify:
            progress(0.7, "loading the quantized folder back and generating")
            reload_s, sample, gen_tps = check_reload(tmp, auto, tokenizer, qtype, trust)
        lineage.write_info(
            tmp,
            {
                **info,
                "files": file_digests(tmp),  # this folder's own, not its source's
                "kind": "quantized",
                "quantization": qtype,
                "source": str(src.resolve()),
                "created_at": time.time(),
            },
        )
        lineage.fsync_tree(tmp)
        replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size = sum(s for _, s in lineage.folder_files(out))
    result = QuantizeResult(
        output=out,
        source=src,
        qtype=qtype,
        seconds=time.time() - t0,
        size_bytes=size,
        source_bytes=sum(s for n, s in lineage.folder_files(src) if n.endswith(".safetensors")),
        reload_seconds=reload_s,
        sample=sample,
        gen_tokens_per_s=gen_tps,
        peak_gpu_mb=torch.cuda.max_memory_allocated() / 2**20,
    )
    lineage.record_step(
        info.get("run_dir"), "quantize", output=str(out.resolve()), type=qtype, size_bytes=size
    )
    progress(1.0, f"{qtype} model in {out}")
    return result


def _check_source(model_dir: str | Path, qtype: str, progress: Progress) -> tuple[Path, dict]:
    """The folder to quantize and its config.json; UserError for an unknown type or a folder
    that is quantized already."""
    if qtype not in TYPES:
        raise UserError(f"--type {qtype}: not a quantization this knows", f"use one of {', '.join(TYPES)}")
    progress(0.0, "checking the model folder")
    src = check_model_dir(model_dir)
    cfg = model_config(src)
    if cfg.get("quantization_config"):
        method = cfg["quantization_config"].get("quant_method", "?")
        raise UserError(
            f"{model_dir}: already quantized ({method})", "quantize the merged bf16/fp32 folder instead"
        )
    return src, cfg


def _load_quantized(src: Path, auto, qtype: str, trust: bool):
    """(tokenizer, model): the model quantized by bitsandbytes as it loads onto the GPU."""
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(src), local_files_only=True)
    model = auto.from_pretrained(
        str(src),
        quantization_config=bnb_config(qtype),
        dtype=torch.bfloat16,
        device_map={"": torch.cuda.current_device()},
        local_files_only=True,
        trust_remote_code=trust,
    )
    return tokenizer, model


def _save_folder(model, tokenizer, src: Path, tmp: Path) -> None:
    from engine.ship.merge import copy_processor_files

    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    copy_processor_files(src, tmp)
    for extra in ("generation_config.json",):
        if (src / extra).is_file() and not (tmp / extra).exists():
            shutil.copyfile(src / extra, tmp / extra)


def check_reload(folder: Path, auto, tokenizer, qtype: str, trust: bool) -> tuple[float, str, float]:
    """Load the written folder with plain from_pretrained; it must come back quantized and generate."""
    import torch

    t = time.time()
    model = auto.from_pretrained(
        str(folder),
        device_map={"": torch.cuda.current_device()},
        local_files_only=True,
        trust_remote_code=trust,
    )
    seconds = time.time() - t
    if not quantized_layers(model):
        raise RuntimeError(f"{folder} loaded back without quantized layers")  # a bug, not bad input
    from engine.ship.merge import probe_ids

    ids = probe_ids(tokenizer, model.device)
    with torch.no_grad():
        t = time.time()
        out = model.generate(input_ids=ids, max_new_tokens=16, min_new_tokens=16, do_sample=False)
        torch.cuda.synchronize()
        tokens_per_s = (out.shape[1] - ids.shape[1]) / (time.time() - t)
    text = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    del model
    torch.cuda.empty_cache()
    return seconds, text, tokens_per_s


def quantized_layers(model) -> int:
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    return sum(isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)) for m in model.modules())
