"""``initial_loss``: the first logged loss outside the guide's 2.0-3.0 ("OK if higher, will
decrease"). About one moment: it never resolves. A resumed run's first loss is not the run's."""

from __future__ import annotations

from engine.train.rules import Curve, Rule, Verdict, register, step_of, verdict


@register
class InitialLossRule(Rule):
    name = "initial_loss"
    order = 10
    kinds = ("step", "resume")
    advice = {
        "initial_loss_high": "OK if higher, will decrease",
        "initial_loss_low": "check the data format (`head -5 dataset.jsonl | jq`): a low first loss can "
        "mean few trained (assistant) tokens per example",
    }

    def __init__(self, config) -> None:
        super().__init__(config)
        self._seen = False
        self._resumed = False

    def check(self, record: dict, curve: Curve) -> list[Verdict]:
        if record.get("kind") == "resume":
            self._resumed = True
            return []
        loss = curve.loss
        if loss is None or self._seen:
            return []
        self._seen = True
        c = self.c
        if self._resumed:
            return []
        if loss > c.initial_loss_max:
            msg, advice, limit = (
                f"initial loss {loss:.3f} > {c.initial_loss_max}",
                "initial_loss_high",
                c.initial_loss_max,
            )
        elif loss < c.initial_loss_min:
            msg, advice, limit = (
                f"initial loss {loss:.3f} < {c.initial_loss_min}",
                "initial_loss_low",
                c.initial_loss_min,
            )
        else:
            return []
        return [
            verdict(
                "initial_loss:once",
                "warning",
                step=step_of(record),
                message=f"{msg} (first logged loss; guide: {c.initial_loss_min}-{c.initial_loss_max})",
                advice=self.advice[advice],
                value=round(loss, 4),
                threshold=limit,
            )
        ]
