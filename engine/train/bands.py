"""The expected train loss and validation perplexity by epoch: the guide's tables, or a
config's own (``health.expected_loss``), for the loss chart's band. Pure, stdlib only."""

from __future__ import annotations

import math
from typing import NamedTuple

# -- the guide's expected bands --------------------------------------------------------------


class Band(NamedTuple):
    loss: tuple[float, float]
    ppl: tuple[float, float]
    note: str


# The guide's tables. "~x" becomes x +- BAND_TOL; "< x" becomes (floor, x); the 10% run's
# initial loss 2.0-3.0 starts both curves at epoch 0 (its perplexity is exp of that loss).
BAND_TOL = 0.10
GUIDE_FULL = [  # epoch, loss, val perplexity, approx?, note
    (0.5, 1.8, 3.5, True, "initial adaptation"),
    (1.0, 1.4, 2.8, True, "foundation solid"),
    (2.0, 1.1, 2.3, True, "dark knowledge integrating"),
    (3.0, 1.0, 2.0, False, "final convergence"),
]
GUIDE_10PCT = [(2.0, 1.5, 3.0, False, "final (10% run)")]


def _anchors(table) -> list[tuple[float, float, float, float, float, str]]:
    e2, e3 = round(math.exp(2.0), 4), round(math.exp(3.0), 4)
    rows = [(0.0, 2.0, 3.0, e2, e3, "initial loss 2.0-3.0 (OK if higher)")]
    for epoch, loss, ppl, approx, note in table:
        if approx:
            lo, hi = round(loss * (1 - BAND_TOL), 4), round(loss * (1 + BAND_TOL), 4)
            plo, phi = round(ppl * (1 - BAND_TOL), 4), round(ppl * (1 + BAND_TOL), 4)
            note = f"epoch {epoch}: loss ~{loss}, ppl ~{ppl} ({note})"
        else:
            lo, hi, plo, phi = 0.0, loss, 1.0, ppl
            note = f"epoch {epoch}: loss < {loss}, ppl < {ppl} ({note})"
        rows.append((epoch, lo, hi, plo, phi, note))
    return rows


_ANCHORS = {"full": _anchors(GUIDE_FULL), "10pct": _anchors(GUIDE_10PCT)}


def _own_anchors(pairs) -> list[tuple[float, float, float, float, float, str]]:
    rows = []
    for epoch, loss in sorted((float(e), float(v)) for e, v in pairs):
        ppl = round(math.exp(min(loss, 50.0)), 4)
        rows.append((epoch, 0.0, loss, 1.0, ppl, f"epoch {epoch:g}: loss < {loss:g} (the config's band)"))
    return rows


def expected_band(epoch: float, phase: str = "full", table=None) -> Band:
    """The guide's expected (lo, hi) train loss and validation perplexity at ``epoch``.

    ``phase``: "full" (the by-epoch table) or "10pct" (initial 2-3, final < 1.5 and
    perplexity < 3.0 at epoch 2). ``table``: the config's own ``[epoch, ceiling]`` pairs
    (``health.expected_loss``) instead of the guide's. Linear between the guide's points, flat past the last;
    the note names the guide's nearest row.
    """
    if table:
        rows = _own_anchors(table)
    elif phase not in _ANCHORS:
        raise ValueError(f"phase must be one of {sorted(_ANCHORS)}, not {phase!r}")
    else:
        rows = _ANCHORS[phase]
    if len(rows) == 1:
        r = rows[0]
        return Band((r[1], r[2]), (r[3], r[4]), r[5])
    e = max(0.0, float(epoch))
    if e >= rows[-1][0] or e <= rows[0][0]:
        r = rows[-1] if e >= rows[-1][0] else rows[0]
        return Band((r[1], r[2]), (r[3], r[4]), r[5])
    for a, b in zip(rows, rows[1:], strict=False):
        if a[0] <= e <= b[0]:
            f = (e - a[0]) / (b[0] - a[0])
            vals = [round(a[i] + f * (b[i] - a[i]), 4) for i in range(1, 5)]
            note = a[5] if f < 0.5 else b[5]
            return Band((vals[0], vals[1]), (vals[2], vals[3]), note)
    raise AssertionError("unreachable")
