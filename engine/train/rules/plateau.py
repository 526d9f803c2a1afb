"""``plateau``: the smoothed loss has not improved by ``plateau_min_delta`` for
``plateau_steps`` steps."""

from __future__ import annotations

from engine.train.rules import Curve, Rule, Verdict, register, step_of, verdict


@register
class PlateauRule(Rule):
    name = "plateau"
    order = 30
    kinds = ("step",)
    advice = {
        "plateau": "increase the learning rate or reduce regularization (guide: the LR should start "
        "~2e-4, warmup ramps over the first 100 steps)"
    }

    def __init__(self, config) -> None:
        super().__init__(config)
        self.restart()

    def restart(self) -> None:
        self._ref: float | None = None  # smoothed loss at the last improvement
        self._ref_step = 0

    def check(self, record: dict, curve: Curve) -> list[Verdict]:
        step, ema, c = step_of(record), curve.ema, self.c
        if curve.loss is None or step is None:
            return []
        if self._ref is None or ema < self._ref - c.plateau_min_delta:
            self._ref, self._ref_step = ema, step
            return [verdict("plateau", None, step=step, value=round(ema, 4), value_name="smoothed loss")]
        if step - self._ref_step < c.plateau_steps:
            return []
        return [
            verdict(
                "plateau",
                "warning",
                step=step,
                message=f"smoothed loss {ema:.3f} has not improved by {c.plateau_min_delta} in "
                f"{step - self._ref_step} steps (since step {self._ref_step}, {self._ref:.3f})",
                advice=self.advice["plateau"],
                value=round(ema, 4),
                threshold=c.plateau_steps,
            )
        ]
