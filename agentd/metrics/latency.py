"""The last seconds' request latencies of a worker, as percentiles (what it reports with
its heartbeat)."""

from __future__ import annotations

import time
from math import exp, log, log1p
from random import random

__all__ = ("SAMPLES_PER_S", "LatencyWindow")

# -- the last seconds' request latencies ---------------------------------------------------
# For the percentiles a worker reports with its heartbeat (the histogram above is
# cumulative and bucketed): one sample reservoir per second, every request offered, at
# most SAMPLES_PER_S kept. Reservoir sampling keeps them uniform; Li's "Algorithm L"
# draws how many requests pass before the next one replaces a kept sample, so past the
# first SAMPLES_PER_S of a second a request costs a counter and a comparison, and only
# about SAMPLES_PER_S * ln(requests / SAMPLES_PER_S) of them draw random numbers (at
# 40,000 a second, 1,300 instead of 40,000).

SAMPLES_PER_S = 256


class _Second:
    """One second's reservoir: requests offered, samples kept, and the offered count at
    which the next one replaces a kept sample (Algorithm L's state: ``w``)."""

    __slots__ = ("kept", "next", "seen", "w")

    def __init__(self) -> None:
        self.seen = 0
        self.kept: list[float] = []
        self.next = 0
        self.w = 1.0

    def full(self) -> None:
        """The reservoir just filled: draw when a sample is first replaced."""
        self.w = _shrink()
        self.next = self.seen + _skip(self.w)

    def replace(self, value: float) -> None:
        self.kept[int(random() * SAMPLES_PER_S)] = value
        self.w *= _shrink()
        self.next += _skip(self.w)


def _unit() -> float:
    """Uniform in (0, 1): random() may give 0.0, whose log is undefined."""
    return random() or 1e-300


def _shrink() -> float:
    """Algorithm L's random factor of ``w`` (its first value, then each replacement's)."""
    return exp(log(_unit()) / SAMPLES_PER_S)


def _skip(w: float) -> int:
    """How many offered requests pass until the next replacement (at least 1)."""
    if w >= 1.0:  # a draw within 2**-45 of 1 rounds w up to 1, where log1p(-w) fails
        return 1
    # Both logs are negative and finite: the floor of a non-negative float.
    return int(log(_unit()) / log1p(-w)) + 1


class LatencyWindow:
    """Percentiles over the last ``window_s`` seconds (whole seconds)."""

    def __init__(self, window_s: int = 10) -> None:
        self.window_s = window_s
        self._seconds: dict[int, _Second] = {}

    def add(self, seconds: float, now: float | None = None) -> None:
        second = int(time.monotonic() if now is None else now)
        slot = self._seconds.get(second)
        if slot is None:
            self._prune(second)
            slot = self._seconds[second] = _Second()
        slot.seen += 1
        kept = slot.kept
        if len(kept) < SAMPLES_PER_S:
            kept.append(seconds)
            if len(kept) == SAMPLES_PER_S:
                slot.full()
        elif slot.seen == slot.next:
            slot.replace(seconds)

    def _prune(self, second: int) -> None:
        for old in [s for s in self._seconds if s <= second - self.window_s]:
            del self._seconds[old]

    def percentiles(self, *qs: float, now: float | None = None) -> list[float | None]:
        """The latencies (seconds) at quantiles ``qs`` (0..1) over the window; None for
        each when no request was seen. Seconds with more requests weigh more."""
        second = int(time.monotonic() if now is None else now)
        self._prune(second)
        weighted: list[tuple[float, float]] = []
        total = 0.0
        for slot in self._seconds.values():
            kept = slot.kept
            if kept:
                weight = slot.seen / len(kept)
                weighted += [(value, weight) for value in kept]
                total += slot.seen
        if not weighted:
            return [None] * len(qs)
        weighted.sort()
        out: list[float | None] = []
        for q in qs:
            target, acc = q * total, 0.0
            pick = weighted[-1][0]
            for value, weight in weighted:
                acc += weight
                if acc >= target:
                    pick = value
                    break
            out.append(pick)
        return out
