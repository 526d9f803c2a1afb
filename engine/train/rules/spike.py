"""``spike``: a logged loss above ``spike_factor`` x the median of the recent window (and above
it by ``spike_min_delta``: near a loss of 0.1 a 1.5x ratio is noise)."""

from __future__ import annotations

import statistics

from engine.train.rules import Curve, Rule, Verdict, register, step_of, verdict


@register
class SpikeRule(Rule):
    name = "spike"
    order = 20
    kinds = ("step",)
    advice = {
        "spike": "reduce the learning rate or check for bad data (guide: learning_rate: 1e-4 if the "
        "loss explodes)"
    }

    def check(self, record: dict, curve: Curve) -> list[Verdict]:
        loss, w = curve.loss, curve.window
        if loss is None or len(w) < min(10, w.maxlen):
            return []
        step = step_of(record)
        med = statistics.median(w)
        high = med > 0 and loss > self.c.spike_factor * med and loss - med > self.c.spike_min_delta
        return [
            verdict(
                "spike",
                "warning" if high else None,
                step=step,
                message=f"loss {loss:.3f} at step {step} is {loss / med:.2f}x the recent median {med:.3f}"
                if high
                else "",
                advice=self.advice["spike"],
                value=round(loss, 4),
                value_name="loss",
                threshold=round(self.c.spike_factor * med, 4),
            )
        ]
