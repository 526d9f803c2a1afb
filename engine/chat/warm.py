"""The decode kernels made ready before training starts, so the first probe or chat pays nothing.

A decode step runs kernels training never ran at those shapes: Liger's Triton kernels (the
q/k RMSNorm's per-row variant, RoPE at one token a row) compile on a machine whose Triton cache
is empty, and cuBLAS picks its small-batch GEMMs. Measured on an H100 the first suite of a
process took 0.5-2 s more than the next one. Here a few tiny eager calls (one row and two rows,
a prompt length of a multiple of 16 and not) run them once on the training model, between
loading it and the first step, where the user waits for the run to start anyway. With
``engine.model.rope_rows`` folding the batch into the sequence, these shapes are all the
variants any later batch size needs.
"""

from __future__ import annotations

import time

import torch

ROWS = ([[1] * 5], [[1] * 5, [1] * 3], [[1] * 8, [1] * 8])  # prompt rows: 5, 10 and 16 positions


def warm(model, cuda_only: bool = True) -> float | None:
    """Seconds spent, or None where nothing runs (no CUDA, a model the engine cannot take)."""
    from engine.chat.decode import Decoder, core_model
    from engine.chat.on_training import training_untouched

    first = next((p for p in core_model(model).parameters() if p.device.type != "meta"), None)
    if first is None or (cuda_only and first.device.type != "cuda"):
        return None
    t0 = time.perf_counter()
    with training_untouched(model):
        d = Decoder(model, mode="eager", base="off")
        if d.usable is not None:
            return None
        try:
            for rows in ROWS:
                d.run(rows, max_new_tokens=3, stop_ids=set(), pad_id=0)
        finally:
            d.release()
    if first.device.type == "cuda":
        torch.cuda.synchronize(first.device)
    return time.perf_counter() - t0
