"""``forgetting``: one ``_category``'s eval loss rose over the last ``forgetting_evals``
evaluations while the overall eval loss fell (``engine.train.forgetting`` keeps the series)."""

from __future__ import annotations

from engine.train.forgetting import ADVICE, ForgettingRule
from engine.train.rules import Curve, Rule, Verdict, register, step_of, verdict


@register
class Forgetting(Rule):
    name = "forgetting"
    order = 35  # after an eval's nan, before overfitting
    kinds = ("eval",)
    advice = {"forgetting": ADVICE}

    def __init__(self, config) -> None:
        super().__init__(config)
        self.series = ForgettingRule(config.forgetting_evals, config.forgetting_min_rise)

    def check(self, record: dict, curve: Curve) -> list[Verdict]:
        step = step_of(record)
        return [
            verdict(f"forgetting:{cat}", "warning" if fired else None, step=step, **alert)
            for cat, fired, alert in self.series.check(record)
        ]
