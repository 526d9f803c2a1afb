"""``gpu_memory``: a GPU's used memory near (warning, from ``gpu_memory_near`` of the line) or
above (critical) ``gpu_memory_max_gb`` (guide: 75 GB), or the card's own size if smaller.

An alert is resolved only after the memory has stayed below its line for ``GPU_LOW_STEPS``
steps: probes or a chat free the allocator's cache for a while (7 GiB between 71 GiB steps on a
QLoRA 8B), which made the alert fire and resolve at every save."""

from __future__ import annotations

from engine.train.rules import Curve, Rule, Verdict, finite, num, register, verdict

GPU_LOW_STEPS = 2


@register
class GpuMemoryRule(Rule):
    name = "gpu_memory"
    order = 80
    kinds = ("gpu",)
    advice = {
        "gpu_memory": "reduce batch size if OOM (guide: micro_batch_size: 1, "
        "gradient_accumulation_steps: 16), or turn on gradient_checkpointing"
    }

    def __init__(self, config) -> None:
        super().__init__(config)
        self._high = False  # an episode is open
        self._low_from: int | None = None  # the step the memory fell below the line at
        self._step = 0

    def _still_open(self, level: str | None, step) -> bool:
        """True while a dip below the line is too short to end the episode."""
        self._step = step if isinstance(step, int) else self._step
        if level is not None:
            self._high, self._low_from = True, None
            return False
        if not self._high:
            return False
        self._low_from = self._step if self._low_from is None else self._low_from
        if self._step - self._low_from < GPU_LOW_STEPS:
            return True
        self._high, self._low_from = False, None
        return False

    def check(self, record: dict, curve: Curve) -> list[Verdict]:
        if record.get("available") is False:
            return []
        worst = None  # (fraction of the limit, gpu, limit_mb)
        for g in record.get("gpus") or []:
            used = num(g.get("used_mb"))
            if not finite(used):
                continue
            limit = self.c.gpu_memory_max_gb * 1024
            total = num(g.get("total_mb"))
            if finite(total) and total > 0:
                # On a card smaller than the guide's 80 GB, its own size is the line.
                limit = min(limit, total)
            frac = used / limit
            if worst is None or frac > worst[0]:
                worst = (frac, g, limit)
        if worst is None:
            return []
        frac, g, limit = worst
        level = "critical" if frac > 1 else ("warning" if frac >= self.c.gpu_memory_near else None)
        if self._still_open(level, record.get("step")):
            return []
        name = f"GPU {g.get('index', '?')}" + (f" ({g['name']})" if g.get("name") else "")
        what = "above" if frac > 1 else "nearing"
        return [
            verdict(
                "gpu_memory",
                level,
                step=record.get("step"),
                message=f"{name} uses {g['used_mb'] / 1024:.1f} GiB, {what} the {limit / 1024:.1f} GiB line",
                advice=self.advice["gpu_memory"],
                value=g["used_mb"],
                value_name="used MB",
                threshold=round(limit),
            )
        ]
