"""Cost curves: one size swept, the cost measured at each point, and the shape judged.

A curve is a list of series; each series has the shape the design predicts for it
(``flat``: the cost per unit of work does not grow with the size; ``linear``: the cost
grows in proportion to the size) and the points measured. :func:`series` fits them and
says whether the measurement shows the predicted shape:

- ``flat``: ``last_over_first`` = the cost at the largest size ÷ the cost at the
  smallest; flat when within ``FLAT_TOLERANCE`` of 1 either way (a throughput that
  halves is no more flat than a cost that doubles).
- ``linear``: a least-squares line ``y = intercept + slope·x``, its ``r2``, and
  ``per_unit_ratio``: the cost each unit of size adds over the smallest point,
  (y - y0)/(x - x0), at the largest size ÷ the same at the first size where that growth
  is at least y0 (``per_unit_from``, a point between the smallest and the largest, the
  second one if none; below it the difference is mostly noise): 1.0 for a straight
  line, above 1 when the cost grows faster than the size. With two points there is no
  ratio and the verdict rests on the line alone.
  Linear when ``r2`` is at least
  ``LINEAR_R2`` and the ratio within ``LINEAR_TOLERANCE`` of 1 either way. Where the
  cost is a difference from a baseline (memory), the intercept is fixed at 0.

The tolerances are wide on purpose: the machine is shared, and a shape is a factor of
10 to 1,000 over the sweep, so noise of ±50 % still tells flat from linear.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ("FLAT_TOLERANCE", "LINEAR_R2", "LINEAR_TOLERANCE", "curve", "fit", "series")

FLAT_TOLERANCE = 1.5
LINEAR_R2 = 0.9
LINEAR_TOLERANCE = 2.0


def fit(
    points: list[tuple[float, float]], through_zero: bool = False
) -> tuple[float, float, float]:
    """(slope, intercept, r²) of the least-squares line through ``points``."""
    n = len(points)
    if n == 0:
        return math.nan, math.nan, math.nan
    xs = [float(p[0]) for p in points]
    ys = [float(p[1]) for p in points]
    if through_zero:
        sxx = sum(x * x for x in xs)
        slope = sum(x * y for x, y in zip(xs, ys, strict=True)) / sxx if sxx else math.nan
        intercept = 0.0
    else:
        mx, my = sum(xs) / n, sum(ys) / n
        sxx = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
        intercept = my - slope * mx
    my = sum(ys) / n
    total = sum((y - my) ** 2 for y in ys)
    residual = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
    r2 = 1.0 - residual / total if total > 0 else 1.0
    return slope, intercept, r2


def _round(value: float, digits: int = 6) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(f"{value:.{digits}g}")


def series(
    label: str,
    points: list[tuple[float, float | None]],
    predicted: str,
    through_zero: bool = False,
) -> dict[str, Any]:
    """One series: its points, the fit, and whether it shows the ``predicted`` shape."""
    if predicted not in ("flat", "linear"):
        raise ValueError(f"predicted must be flat or linear, not {predicted!r}")
    good = sorted((float(x), float(y)) for x, y in points if y is not None and math.isfinite(y))
    out: dict[str, Any] = {
        "label": label,
        "predicted": predicted,
        "points": [[x, _round(y)] for x, y in good],
    }
    if len(good) < 2:
        out.update(shown=None, verdict="too few points to judge")
        return out
    slope, intercept, r2 = fit(good, through_zero)
    (x0, y0), (x1, y1) = good[0], good[-1]
    out.update(slope=_round(slope), intercept=_round(intercept), r2=_round(r2, 4))
    out["last_over_first"] = _round(y1 / y0, 4) if y0 > 0 else None
    # Per unit of size, the cost above the smallest point's (the fixed part and noise):
    # from the first point where that growth is at least the smallest point's cost
    # (below, the difference is mostly noise) to the largest point.
    inner = good[1:-1]
    grown = [(x, y) for x, y in inner if y - y0 >= abs(y0)] or inner[:1]
    per = None
    if grown:
        xa, ya = grown[0]
        per0, per1 = (ya - y0) / (xa - x0), (y1 - y0) / (x1 - x0)
        out["per_unit_from"] = xa
        per = _round(per1 / per0, 4) if per0 > 0 and per1 > 0 else None
    out["per_unit_ratio"] = per
    if predicted == "flat":
        ratio = out["last_over_first"]
        shown = ratio is not None and 1 / FLAT_TOLERANCE <= ratio <= FLAT_TOLERANCE
        out["verdict"] = (
            f"flat as predicted ({ratio:.2f}x from {x0:,.0f} to {x1:,.0f})"
            if shown
            else f"not flat: from {y0:.4g} at {x0:,.0f} to {y1:.4g} at {x1:,.0f}"
        )
    else:
        # Two points make any line; the per-unit ratio needs a third.
        shown = (
            r2 >= LINEAR_R2
            and slope > 0
            and (per is None or 1 / LINEAR_TOLERANCE <= per <= LINEAR_TOLERANCE)
        )
        across = (
            f"per-unit cost at {x1:,.0f} ÷ at {out['per_unit_from']:,.0f} = {per:.2f}"
            if per is not None
            else "per-unit ratio needs 3 points"
        )
        out["verdict"] = (
            f"{'linear as predicted' if shown else 'not linear'}: slope {slope:.4g}, "
            f"r² {r2:.3f}, {across}"
        )
    out["shown"] = shown
    return out


def curve(
    name: str, title: str, x_label: str, y_label: str, lines: list[dict[str, Any]], why: str
) -> dict[str, Any]:
    """A curve (one plot): its axes, its series and why the design predicts their shape."""
    return {
        "name": name,
        "title": title,
        "x_label": x_label,
        "y_label": y_label,
        "why": why,
        "series": lines,
    }
