"""The ``forgetting`` health rule: a category's eval loss rising while the overall one falls."""

from __future__ import annotations

from engine.config.config import HealthConfig
from engine.train.health import HealthMonitor


def _eval(step, overall, **cats):
    return {"kind": "eval", "step": step, "eval_loss": overall, "epoch": 0.1, "by_category": cats}


def _forgetting(alerts):
    return [a for a in alerts if a["rule"] == "forgetting"]


def test_a_category_rising_while_the_whole_falls_alerts_once_then_resolves():
    m = HealthMonitor(HealthConfig(forgetting_evals=3, forgetting_min_rise=0.02))
    seen = []
    coding = [1.0, 1.05, 1.1, 1.2, 1.3, 0.9]
    identity = [2.0, 1.8, 1.6, 1.4, 1.2, 1.0]
    overall = [1.5, 1.42, 1.35, 1.3, 1.25, 0.95]
    for i, (o, c, d) in enumerate(zip(overall, coding, identity, strict=True)):
        seen.append(_forgetting(m.observe(_eval(25 * (i + 1), o, coding=c, identity=d))))
    assert seen[:3] == [[], [], []]  # three evaluations back are needed first
    (alert,) = seen[3]
    assert alert["category"] == "coding" and alert["level"] == "warning" and alert["step"] == 100
    assert "1.000 -> 1.200" in alert["message"] and "1.500 -> 1.300" in alert["message"]
    assert seen[4] == []  # still forgetting: one alert per episode
    (resolved,) = seen[5]
    assert (
        resolved["resolved"]
        and resolved["step"] == 150
        and "'coding' eval loss now 0.9" in resolved["message"]
    )


def test_no_alert_when_everything_rises_or_the_rise_is_small_or_the_rule_is_off():
    rising = [(1.0, 1.0), (1.1, 1.1), (1.2, 1.2), (1.3, 1.3)]  # overall rises too: not forgetting
    small = [(1.5, 1.0), (1.4, 1.005), (1.3, 1.01), (1.2, 1.015)]  # +0.015 < min_rise
    for series, evals in ((rising, 3), (small, 3), ([(1.5, 1.0), (1.4, 1.5), (1.3, 2.0)], 0)):
        m = HealthMonitor(HealthConfig(forgetting_evals=evals))
        alerts = [a for i, (o, c) in enumerate(series) for a in m.observe(_eval(i + 1, o, coding=c))]
        assert _forgetting(alerts) == []


def test_evals_without_categories_are_left_alone():
    m = HealthMonitor(HealthConfig(forgetting_evals=1))
    assert _forgetting(m.observe({"kind": "eval", "step": 1, "eval_loss": 1.0})) == []
    assert _forgetting(m.observe({"kind": "eval", "step": 2, "eval_loss": 0.9})) == []
