"""The ``forgetting`` health rule: one ``_category`` gets worse while the whole gets better.

An eval record's ``by_category`` (engine.train.eval_categories) holds each category's eval
loss. When a category's loss has risen over the last ``forgetting_evals`` evaluations (by more
than ``forgetting_min_rise``, from the evaluation that many before) while the overall eval
loss fell over the same evaluations, the mix is trading that category away: the average hides
it. The rule is its own small piece so that it can move into a rule registry as it is.
"""

from __future__ import annotations

import math
from collections import deque

ADVICE = (
    "raise that category's share of the data (a curriculum phase or more rows), lower the "
    "learning rate, or keep an earlier checkpoint; look at its probe answers"
)


def forgetting(overall: list[float], category: list[float], min_rise: float) -> bool:
    """``category`` rose by more than ``min_rise`` from first to last while ``overall`` fell."""
    if len(overall) < 2 or len(category) != len(overall):
        return False
    return category[-1] - category[0] > min_rise and overall[-1] < overall[0]


class ForgettingRule:
    """Keeps the last evaluations; ``check(record)`` -> [(category, forgetting?, alert fields)]."""

    def __init__(self, evals: int, min_rise: float) -> None:
        self.evals, self.min_rise = evals, min_rise
        self.history: deque[tuple[float, dict]] = deque(maxlen=evals + 1)

    def check(self, record: dict) -> list[tuple[str, bool, dict]]:
        loss, cats = record.get("eval_loss"), record.get("by_category")
        if not self.evals or not isinstance(cats, dict) or not _finite(loss):
            return []
        self.history.append((float(loss), {k: float(v) for k, v in cats.items() if _finite(v)}))
        if len(self.history) <= self.evals:
            return []
        overall = [h[0] for h in self.history]
        out = []
        for cat in sorted(self.history[-1][1]):
            series = [h[1].get(cat) for h in self.history]
            if any(v is None for v in series):
                continue
            now = {"value": round(series[-1], 4), "value_name": f"{cat!r} eval loss", "category": cat}
            if not forgetting(overall, series, self.min_rise):
                out.append((cat, False, now))
                continue
            out.append(
                (
                    cat,
                    True,
                    {
                        **now,
                        "message": f"eval loss of _category {cat!r} rose {series[0]:.3f} -> {series[-1]:.3f} "
                        f"over the last {self.evals} evaluations while the overall eval loss fell "
                        f"{overall[0]:.3f} -> {overall[-1]:.3f}",
                        "advice": ADVICE,
                    },
                )
            )
        return out


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
