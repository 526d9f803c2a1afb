"""``gpu_memory``: a GPU's used memory near (warning, from ``gpu_memory_near`` of the line) or
above (critical) ``gpu_memory_max_gb`` (guide: 75 GB), or the card's own size if smaller."""

from __future__ import annotations

from engine.train.rules import Curve, Rule, Verdict, finite, num, register, verdict


@register
class GpuMemoryRule(Rule):
    name = "gpu_memory"
    order = 80
    kinds = ("gpu",)
    advice = {
        "gpu_memory": "reduce batch size if OOM (guide: micro_batch_size: 1, "
        "gradient_accumulation_steps: 16), or turn on gradient_checkpointing"
    }

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
