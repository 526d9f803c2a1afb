"""``perplexity``: validation perplexity > ``perplexity_max`` (warning) or >
``perplexity_investigate`` (critical), from ``perplexity_after_epoch`` on."""

from __future__ import annotations

import math

from engine.train.rules import Curve, Rule, Verdict, finite_eval_loss, fmt, num, register, step_of, verdict


@register
class PerplexityRule(Rule):
    name = "perplexity"
    order = 70
    kinds = ("eval",)
    advice = {
        "perplexity": "expected < 3.0 (guide); it should keep falling as training goes on",
        "perplexity_investigate": "investigate (guide: > 4.0): check the data format and the learning "
        "rate, and compare train and eval loss",
    }

    def check(self, record: dict, curve: Curve) -> list[Verdict]:
        loss, epoch, c = finite_eval_loss(record), num(record.get("epoch")), self.c
        if loss is None or (epoch is not None and epoch < c.perplexity_after_epoch):
            return []
        ppl = num(record.get("perplexity"))
        if ppl is None:
            ppl = math.exp(loss) if loss < 50 else math.inf
        level = limit = None
        if ppl > c.perplexity_investigate:
            level, limit = "critical", c.perplexity_investigate
        elif ppl > c.perplexity_max:
            level, limit = "warning", c.perplexity_max
        return [
            verdict(
                "perplexity",
                level,
                step=step_of(record),
                message=f"validation perplexity {fmt(ppl)} > {limit}" if level else "",
                advice=self._advice(level) if level else "",
                value=round(ppl, 4) if math.isfinite(ppl) else str(ppl),
                value_name="perplexity",
                threshold=limit,
            )
        ]

    def _advice(self, level: str) -> str:
        """The guide's advice with this config's bands (the guide's own are 3.0 and 4.0)."""
        c = self.c
        if level == "warning":
            return f"expected < {c.perplexity_max} (guide: < 3.0); it should keep falling as training goes on"
        return (
            f"investigate (above {c.perplexity_investigate}; guide: > 4.0): check the data format and the "
            "learning rate, and compare train and eval loss"
        )
