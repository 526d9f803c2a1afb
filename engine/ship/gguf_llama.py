"""llama.cpp's C code, run in a child process so that its crashing on a file (or on this CPU: a
wheel built for another one dies of SIGILL) is an error with its log, not a dead export:

    python gguf_llama.py quantize SRC.gguf OUT.gguf FTYPE THREADS    # llama_model_quantize
    python gguf_llama.py run SPEC.json OUT.npz                       # the runtime check's side

``run`` is the llama.cpp side of engine/ship/gguf_runtime.py's check. SPEC: ``gguf``, ``texts`` (rendered prompts), ``prompts`` (their HF token ids), ``stops``,
``answer_tokens``. OUT: per prompt i, ``tokens{i}`` (llama.cpp's tokenization of text i),
``chosen{i}`` (its greedy tokens: argmax of its own logits, no sampler, up to and with a stop
token) and ``logits{i}`` (float32, one row per position fed).

Two settings differ from llama.cpp's defaults, both to check the file rather than this CPU's
kernels:
- no extra CPU buffer types (``use_extra_bufts``): llama.cpp's AMX repacking of Q8_0 weights
  segfaulted on the first batch on this dev machine's Xeon (AMX_INT8), f16 files ran fine;
- the KV cache in f32 instead of f16, so that the logits differ only by the file's rounding.

Imports nothing of the engine: only numpy and llama_cpp.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np


def _plain_params(llama_cpp):
    """``Llama`` reads its model parameters from this function; the same, without extra buffers."""
    low = llama_cpp.llama_cpp
    default = low.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p

    low.llama_model_default_params = params


def quantize(src: str, out: str, ftype: str, threads: str) -> int:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(ftype)
    params.nthread = int(threads)
    return llama_cpp.llama_model_quantize(src.encode(), out.encode(), params)


def run(spec_path: str, out_path: str) -> None:
    import llama_cpp
    from llama_cpp import _logger

    _logger.set_verbose(False)
    _plain_params(llama_cpp)
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    n_ctx = max(len(p) for p in spec["prompts"]) + spec["answer_tokens"] + 8
    f32 = llama_cpp.GGML_TYPE_F32
    llm = llama_cpp.Llama(
        model_path=spec["gguf"],
        n_ctx=n_ctx,
        n_batch=n_ctx,
        logits_all=True,
        n_gpu_layers=0,
        n_threads=os.cpu_count() or 1,
        type_k=f32,
        type_v=f32,
        verbose=False,
    )
    stops = set(spec["stops"])
    out = {}
    for i, (text, ids) in enumerate(zip(spec["texts"], spec["prompts"], strict=True)):
        out[f"tokens{i}"] = np.array(llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))
        llm.reset()
        llm.eval(ids)
        chosen: list[int] = []
        while len(chosen) < spec["answer_tokens"]:
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            chosen.append(token)
            if token in stops:
                break
            llm.eval([token])
        out[f"chosen{i}"] = np.array(chosen, dtype=np.int64)
        out[f"logits{i}"] = np.array(llm.scores[: llm.n_tokens], dtype=np.float32)
    llm.close()
    np.savez(out_path, **out)


if __name__ == "__main__":
    if sys.argv[1] == "quantize":
        sys.exit(quantize(*sys.argv[2:6]))
    run(*sys.argv[2:4])
