"""Health rules: one module a rule, registered like the metric sinks (``engine.train.sinks``).

A rule is a ``Rule`` subclass in a module of this package, decorated with ``@register``. It
says which record kinds it reads (``kinds``) and where its alerts go among the alerts of one
record (``order``: the monitor asks rules in that order), and ``check`` returns its verdicts
on one record: ``verdict(key, level, ...)`` with level None when the rule is healthy again.
The monitor (``engine.train.health.HealthMonitor``) turns verdicts into alerts once per
episode; a rule holds only its own state. What several rules read about the train loss curve
(this step's loss, the recent window, the smoothed loss) is the monitor's ``Curve``.

Adding a rule is one file here (its thresholds, if new, are fields of ``HealthConfig``):
``rules()`` imports every module of the package, so nothing else needs to be told.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
from collections import deque
from typing import ClassVar, NamedTuple

from engine.config.config import HealthConfig


class Verdict(NamedTuple):
    key: str  # the rule's name, or "name:variant" for a rule with separate episodes
    level: str | None  # "warning" / "critical"; None: healthy (resolves an open episode)
    alert: dict  # message, advice, step, value, value_name, threshold


def verdict(key: str, level: str | None, **alert) -> Verdict:
    return Verdict(key, level, alert)


class Curve:
    """The train loss as the rules see it at one record: ``loss`` is this step record's finite
    loss (None on other records or a non-finite loss), ``window`` the recent logged losses
    before it, ``ema`` the smoothed loss with it."""

    def __init__(self, config: HealthConfig) -> None:
        self._alpha = 2.0 / (config.smoothing_span + 1)
        self._span = config.spike_window
        self.loss: float | None = None
        self.restart()

    def restart(self) -> None:
        """A new stretch of curve: after a resume, or when the steps go back."""
        self.window: deque[float] = deque(maxlen=self._span)
        self.ema: float | None = None
        self.last_step: int | None = None

    def logged(self) -> list[float]:
        """The recent window with this step's loss (the oldest dropped past the window's size)."""
        losses = [*self.window, *([] if self.loss is None else [self.loss])]
        return losses[-self._span :]

    def smooth(self, loss: float) -> None:
        self.loss = loss
        self.ema = loss if self.ema is None else self.ema + self._alpha * (loss - self.ema)


class Rule:
    """One health rule; subclasses set the class attributes and ``check``."""

    name: ClassVar[str]
    order: ClassVar[int]
    kinds: ClassVar[tuple[str, ...]]
    advice: ClassVar[dict[str, str]] = {}  # advice key -> the guide's advice

    def __init__(self, config: HealthConfig) -> None:
        self.c = config

    def check(self, record: dict, curve: Curve) -> list[Verdict]:
        raise NotImplementedError

    def restart(self) -> None:
        """A new stretch of curve (see ``Curve.restart``): forget what was about the old one."""


_RULES: dict[str, type[Rule]] = {}


def register(cls: type[Rule]) -> type[Rule]:
    _RULES[cls.name] = cls
    return cls


def _load_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


def rule_types() -> list[type[Rule]]:
    """Every registered rule, in ``order``."""
    _load_all()
    return sorted(_RULES.values(), key=lambda cls: cls.order)


def rules(config: HealthConfig) -> list[Rule]:
    return [cls(config) for cls in rule_types()]


def all_advice() -> dict[str, str]:
    return {k: v for cls in rule_types() for k, v in cls.advice.items()}


# -- what rules read in records ---------------------------------------------------------------


def num(value) -> float | None:
    """A record's number: floats, ints and the strings "nan"/"inf"/"-inf"; None otherwise."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def fmt(x: float) -> str:
    return f"{x:.4g}" if math.isfinite(x) else str(x)


def step_of(record: dict) -> int | None:
    return record.get("step") if isinstance(record.get("step"), int) else None


def finite_eval_loss(record: dict) -> float | None:
    loss = num(record.get("eval_loss"))
    return loss if finite(loss) else None
