"""``nan``: a loss, grad norm or eval loss that is NaN or Inf (the run log writes them as the
strings "nan"/"inf"). Critical."""

from __future__ import annotations

from engine.train.rules import Curve, Rule, Verdict, finite, num, register, step_of, verdict

ADVICE = (
    "reduce the learning rate (guide: learning_rate: 1e-4 if the loss explodes) or check "
    "for bad data; resume from the last complete checkpoint"
)


@register
class NanRule(Rule):
    name = "nan"
    order = 0
    kinds = ("step", "eval")
    advice = {"nan": ADVICE}

    def check(self, record: dict, curve: Curve) -> list[Verdict]:
        step = step_of(record)
        if record.get("kind") == "eval":
            loss = num(record.get("eval_loss"))
            if loss is None:
                return []
            return [
                verdict(
                    "nan:eval",
                    None if finite(loss) else "critical",
                    step=step,
                    message=f"eval loss is {loss} at step {step}",
                    advice=ADVICE,
                    value=str(loss) if not finite(loss) else round(loss, 4),
                    value_name="eval loss",
                )
            ]
        loss, grad = num(record.get("loss")), num(record.get("grad_norm"))
        bad = [(n, v) for n, v in (("loss", loss), ("grad norm", grad)) if v is not None and not finite(v)]
        return [
            verdict(
                "nan:step",
                "critical" if bad else None,
                step=step,
                message=" and ".join(f"{n} is {v}" for n, v in bad) + f" at step {step}",
                advice=ADVICE,
                value=str(bad[0][1]) if bad else (round(loss, 4) if finite(loss) else None),
                value_name="loss",
            )
        ]
