"""``underfitting``: eval and train loss both > ``underfit_loss`` after epoch 1; on a run with no
validation set (its ``data`` record has no ``val_rows``), the smoothed train loss alone
(``underfitting:train``, an episode of its own)."""

from __future__ import annotations

from engine.train.rules import Curve, Rule, Verdict, finite_eval_loss, num, register, step_of, verdict

ADVICE = "increase model capacity (lora_r) or the learning rate"


@register
class UnderfittingRule(Rule):
    name = "underfitting"
    order = 50
    kinds = ("data", "step", "eval")
    advice = {"underfitting": ADVICE}

    def __init__(self, config) -> None:
        super().__init__(config)
        self._has_val: bool | None = None

    def check(self, record: dict, curve: Curve) -> list[Verdict]:
        kind = record.get("kind")
        if kind == "data":
            self._has_val = bool(record.get("val_rows"))
            return []
        epoch = num(record.get("epoch"))
        if epoch is None or epoch < self.c.underfit_after_epoch:
            return []
        return self._eval(record, curve, epoch) if kind == "eval" else self._train(record, curve, epoch)

    def _train(self, record: dict, curve: Curve, epoch: float) -> list[Verdict]:
        if self._has_val is not False or curve.loss is None:
            return []
        limit, train = self.c.underfit_loss, curve.ema
        return [
            verdict(
                "underfitting:train",
                "warning" if train > limit else None,
                step=step_of(record),
                message=f"train loss {train:.3f} (smoothed) > {limit} at epoch {epoch:.2f} (no validation set)",
                advice=ADVICE,
                value=round(train, 4),
                value_name="smoothed train loss",
                threshold=limit,
            )
        ]

    def _eval(self, record: dict, curve: Curve, epoch: float) -> list[Verdict]:
        loss, train, limit = finite_eval_loss(record), curve.ema, self.c.underfit_loss
        if loss is None or train is None:
            return []
        last = f"(smoothed; last logged {curve.window[-1]:.3f})" if curve.window else "(smoothed)"
        return [
            verdict(
                "underfitting",
                "warning" if loss > limit and train > limit else None,
                step=step_of(record),
                message=f"eval loss {loss:.3f} and train loss {train:.3f} {last} both > {limit} at epoch {epoch:.2f}",
                advice=ADVICE,
                value=round(min(loss, train), 4),
                value_name="eval loss",
                threshold=limit,
            )
        ]
