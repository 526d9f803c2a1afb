"""The decode kernels made ready before training starts, so the first probe or chat pays nothing.

A decode step runs kernels training never ran at those shapes: Liger's Triton kernels (the
q/k RMSNorm's per-row variant, RoPE at one token a row) compile on a machine whose Triton cache
is empty; cuBLAS loads its small-batch GEMMs, a 4-bit base's bf16 copy its dequantizing and
merging kernels. Measured on an H100 (benchmarks/qlora_decode.py --vl) a process's first decode
call took 2.66 s, four Triton kernels built in it, where the first call of the paths after it took
0.3 s. Here three tiny calls made as a probe makes them (one row, two rows, 16 prompt positions)
run on the training model at train begin, before the first step, where the user waits for the
run to start anyway: after ``Trainer.train()`` has applied Liger's kernels, or they would run
the model's own norms and RoPE and compile nothing a probe uses. With ``engine.model.rope_rows``
folding the batch into the sequence, these shapes are all the variants any later batch size
needs.
"""

from __future__ import annotations

import time

import torch

ROWS = ([[1] * 5], [[1] * 5, [1] * 3], [[1] * 8, [1] * 8])  # prompt rows: 5, 10 and 16 positions


def warm(model, cuda_only: bool = True) -> float | None:
    """Seconds spent, or None where nothing runs (no CUDA, a model the engine cannot take)."""
    from engine.chat.decode import core_model
    from engine.chat.generate import ACTIVE, release, run_rows
    from engine.chat.on_training import training_untouched

    first = next((p for p in core_model(model).parameters() if p.device.type != "meta"), None)
    if first is None or (cuda_only and first.device.type != "cuda"):
        return None
    t0 = time.perf_counter()
    with training_untouched(model):
        try:
            # As a probe runs: the live adapter, so a 4-bit base's bf16 copy is made and the
            # adapter merged into it (their kernels load here too), and steps captured as graphs.
            for rows in ROWS:
                run_rows(model, rows, max_new_tokens=3, stop_ids=set(), pad_id=0, names=[ACTIVE] * len(rows))
        finally:
            release(model)  # the copy, caches and graphs: training takes the memory
    if first.device.type == "cuda":
        torch.cuda.synchronize(first.device)
    return time.perf_counter() - t0
