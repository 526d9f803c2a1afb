"""A step's record read one step late, so that the host never waits for the GPU between steps.

Logging a step reads its loss, grad norm and counts from the GPU, and the NaN guard reads
whether the step was finite: each read drains the GPU's queue, which then idles while Python
runs the step boundary (callbacks, the next batch, the next forward's first launches), ~25 ms
of an 8B step's ~600 in benchmarks/step_profile.py's trace. Here the values are copied to
host memory behind the step's own kernels and read once the next step's optimizer step is
queued, when they have long arrived: the record is written one step later with the same
numbers. A boundary that acts on the record (an eval, a save, a stop, the last step, a pause)
reads it at once, as before (``LeviathanTrainer._lag_now``).

``LEVIATHAN_STEP_LAG``: ``auto`` (on CUDA, one process), ``on`` (also on the CPU: the tests'
way to run this path), ``off``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import torch

ENV = "LEVIATHAN_STEP_LAG"


def wanted(device: torch.device, processes: int, deepspeed: bool) -> bool:
    mode = os.environ.get(ENV, "auto")
    if mode == "off" or processes > 1 or deepspeed:  # several ranks gather at the same points
        return False
    return mode == "on" or device.type == "cuda"


@dataclass
class Lagged:
    """One boundary's device values on their way to the host, and what the host knew then."""

    step: int
    epoch: float | None
    host: dict  # plain values: the learning rate, steps since the last log, ...
    names: list[str]
    values: torch.Tensor | None
    event: object  # a torch.cuda.Event recorded after the copy (None on the CPU)
    at: float = field(default_factory=time.time)  # when the host finished the step's launches

    @classmethod
    def take(cls, step: int, epoch, values: dict, host: dict) -> Lagged:
        names = [k for k, v in values.items() if torch.is_tensor(v)]
        plain = {k: v for k, v in values.items() if not torch.is_tensor(v)}
        flat, event = None, None
        if names:
            # float64: a token count past 2**24 stays exact.
            flat = torch.stack([values[k].detach().reshape(()).to(torch.float64) for k in names])
            if flat.is_cuda:
                flat = flat.to("cpu", non_blocking=True)  # into pinned memory, behind the step
                event = torch.cuda.Event()
                event.record()
        return cls(step, epoch, {**host, **plain}, names, flat, event)

    def read(self) -> dict:
        if self.event is not None:
            self.event.synchronize()  # recorded a step ago: long passed
        got = dict(zip(self.names, self.values.tolist(), strict=True)) if self.names else {}
        return {**self.host, **got}
