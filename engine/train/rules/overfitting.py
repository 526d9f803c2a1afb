"""``overfitting``: eval loss - smoothed train loss > ``overfit_gap``."""

from __future__ import annotations

from engine.train.rules import Curve, Rule, Verdict, finite_eval_loss, register, step_of, verdict


@register
class OverfittingRule(Rule):
    name = "overfitting"
    order = 40
    kinds = ("eval",)
    advice = {"overfitting": "reduce epochs (num_epochs) or increase dropout (lora_dropout)"}

    def check(self, record: dict, curve: Curve) -> list[Verdict]:
        loss, train, c = finite_eval_loss(record), curve.ema, self.c
        if loss is None or train is None:
            return []
        gap = loss - train
        return [
            verdict(
                "overfitting",
                "warning" if gap > c.overfit_gap else None,
                step=step_of(record),
                message=f"eval loss {loss:.3f} - train loss {train:.3f} (smoothed) = {gap:.3f} > {c.overfit_gap}",
                advice=self.advice["overfitting"],
                value=round(gap, 4),
                value_name="eval - train gap",
                threshold=c.overfit_gap,
            )
        ]
