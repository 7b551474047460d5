"""The harness's statistics: percentiles, ratios, the open-loop schedule and rate search.

Pure functions only, so the unit tests can pin every definition the report relies on.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

__all__ = (
    "PERCENTILES",
    "RateSearch",
    "growth",
    "latencies_from_schedule",
    "percentile",
    "ratio",
    "schedule",
    "summarize",
    "windows",
)

# The percentiles every latency summary reports, and their keys in results.json.
PERCENTILES: tuple[tuple[str, float], ...] = (
    ("p50", 50.0),
    ("p90", 90.0),
    ("p99", 99.0),
    ("p99.9", 99.9),
)


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile of already sorted values (``nan`` if empty).

    Nearest rank (the smallest value with at least p % of the values at or below it)
    is what HdrHistogram and wrk report, and never invents a value that was not seen.
    """
    if not 0.0 <= p <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {p}")
    n = len(sorted_values)
    if n == 0:
        return math.nan
    rank = max(1, math.ceil(p / 100.0 * n))
    return float(sorted_values[rank - 1])


def summarize(latencies_s: Iterable[float]) -> dict[str, float | None]:
    """Percentiles, mean and max of latencies given in seconds, reported in milliseconds."""
    values = sorted(latencies_s)
    if not values:
        return {key: None for key in [*(k for k, _ in PERCENTILES), "mean", "max"]}
    out: dict[str, float | None] = {
        key: round(percentile(values, p) * 1000.0, 4) for key, p in PERCENTILES
    }
    out["mean"] = round(sum(values) / len(values) * 1000.0, 4)
    out["max"] = round(values[-1] * 1000.0, 4)
    return out


def ratio(value: float | None, baseline: float | None, digits: int = 3) -> float | None:
    """``value / baseline``, or ``None`` when either is missing or the baseline is 0."""
    if value is None or baseline is None or baseline == 0:
        return None
    if math.isnan(value) or math.isnan(baseline):
        return None
    return round(value / baseline, digits)


def schedule(rate: float, duration: float, start: float = 0.0) -> list[float]:
    """Intended send times of a constant-rate open-loop run: one every ``1/rate`` s.

    Latency is counted from these times, not from when a request actually left, so a
    stalled server is charged for every request that should have been sent meanwhile
    (no coordinated omission).
    """
    if rate <= 0 or duration <= 0:
        return []
    count = int(rate * duration)
    return [start + i / rate for i in range(count)]


def latencies_from_schedule(intended: Sequence[float], completed: Sequence[float]) -> list[float]:
    """Open-loop latency of each request: completion time minus *intended* send time."""
    if len(intended) != len(completed):
        raise ValueError("intended and completed times must pair up")
    return [done - planned for planned, done in zip(intended, completed, strict=True)]


def windows(
    ends: Sequence[float], latencies: Sequence[float], width: float
) -> list[dict[str, float | int | None]]:
    """Per-window count, rate and p99 (ms) of latencies keyed by completion time (s)."""
    if width <= 0:
        raise ValueError("window width must be positive")
    buckets: dict[int, list[float]] = {}
    for end, latency in zip(ends, latencies, strict=True):
        buckets.setdefault(int(end // width), []).append(latency)
    out: list[dict[str, float | int | None]] = []
    for index in sorted(buckets):
        values = sorted(buckets[index])
        out.append(
            {
                "t": round(index * width, 3),
                "requests": len(values),
                "rps": round(len(values) / width, 1),
                "p99": round(percentile(values, 99.0) * 1000.0, 4),
            }
        )
    return out


def growth(samples: Sequence[tuple[float, float]]) -> dict[str, float | int | None]:
    """Memory growth over a soak from ``(seconds, MiB)`` samples: the mean of the first
    tenth of the samples against the mean of the last tenth, per minute between the
    middles of the two tenths, and in percent of the first. A tenth is at least one
    sample; fewer than two samples give no growth."""
    n = len(samples)
    if n == 0:
        return {"samples": 0, "start_mb": None, "end_mb": None, "mb_per_min": None, "pct": None}
    tenth = max(1, n // 10)
    first, last = samples[:tenth], samples[-tenth:]
    start = sum(v for _, v in first) / tenth
    end = sum(v for _, v in last) / tenth
    minutes = (sum(t for t, _ in last) - sum(t for t, _ in first)) / tenth / 60.0
    return {
        "samples": n,
        "start_mb": round(start, 2),
        "end_mb": round(end, 2),
        "mb_per_min": round((end - start) / minutes, 4) if n > 1 and minutes > 0 else None,
        "pct": round((end - start) / start * 100.0, 2) if n > 1 and start > 0 else None,
    }


class RateSearch:
    """Finds the highest constant arrival rate whose p99 stays under a bound.

    It walks up fractions of a measured closed-loop capacity until a rate fails (p99
    over the bound, or any error), then bisects between the last good and the first bad
    rate. Bounded: at most ``len(fractions) + bisections`` trials.
    """

    def __init__(
        self,
        capacity: float,
        bound_ms: float,
        fractions: Sequence[float] = (0.3, 0.5, 0.7, 0.85, 1.0, 1.2),
        bisections: int = 2,
    ) -> None:
        self.capacity = max(capacity, 1.0)
        self.bound_ms = bound_ms
        self._ladder = [round(self.capacity * f, 1) for f in fractions]
        self._bisections = bisections
        self.good: float | None = None
        self.bad: float | None = None
        self.trials: list[dict[str, float | bool | None]] = []

    def next_rate(self) -> float | None:
        """The next rate to try, or ``None`` when the search is over."""
        if self.bad is None:
            tried = {t["rate"] for t in self.trials}
            for rate in self._ladder:
                if rate not in tried:
                    return rate
            return None  # every rung held: the answer is the top of the ladder
        if self._bisections <= 0:
            return None
        low = self.good if self.good is not None else 0.0
        if self.bad - low < 1.0:
            return None
        self._bisections -= 1
        return round((low + self.bad) / 2.0, 1)

    def record(self, rate: float, p99_ms: float | None, errors: int) -> bool:
        """Record one trial; returns whether it held the bound."""
        ok = errors == 0 and p99_ms is not None and p99_ms <= self.bound_ms
        self.trials.append({"rate": rate, "p99": p99_ms, "errors": errors, "ok": ok})
        if ok and (self.good is None or rate > self.good):
            self.good = rate
        if not ok and (self.bad is None or rate < self.bad):
            self.bad = rate
        return ok

    @property
    def best(self) -> float | None:
        """The highest rate that held the bound (``None`` if none did)."""
        return self.good
