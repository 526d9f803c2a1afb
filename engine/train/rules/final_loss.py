"""``final_loss``: the loss at the last step (mean of the last 10 logged) above
``final_loss_max`` (above ``final_loss_check_data``: check the data format). About one moment:
it never resolves."""

from __future__ import annotations

from engine.train.rules import Curve, Rule, Verdict, register, step_of, verdict


@register
class FinalLossRule(Rule):
    name = "final_loss"
    order = 60
    kinds = ("step",)
    advice = {
        "final_loss": "expected < 1.5 at the end (guide); train longer or check the learning rate",
        "final_loss_data": "check the data format (guide: if > 2.0; `head -5 dataset.jsonl | jq`)",
    }

    def __init__(self, config) -> None:
        super().__init__(config)
        self._done = False

    def check(self, record: dict, curve: Curve) -> list[Verdict]:
        step, max_steps = step_of(record), record.get("max_steps")
        last = isinstance(max_steps, int) and max_steps > 0 and step is not None and step >= max_steps
        if not last or curve.loss is None or self._done:
            return []
        self._done = True
        # The mean of the last few logged losses: an EMA would still carry the early curve on a
        # short run.
        tail = curve.logged()[-10:]
        final, c = sum(tail) / len(tail), self.c
        if final > c.final_loss_check_data:
            advice, limit = "final_loss_data", c.final_loss_check_data
        elif final > c.final_loss_max:
            advice, limit = "final_loss", c.final_loss_max
        else:
            return []
        return [
            verdict(
                "final_loss:once",
                "warning",
                step=step,
                message=f"final loss {final:.3f} (mean of the last {len(tail)} logged) > {limit} at the "
                f"last step ({step})",
                advice=self.advice[advice],
                value=round(final, 4),
                threshold=limit,
            )
        ]
