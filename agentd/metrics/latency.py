"""The last seconds' request latencies of a worker, as percentiles (what it reports with
its heartbeat)."""

from __future__ import annotations

import random
import time

__all__ = ("SAMPLES_PER_S", "LatencyWindow")

# -- the last seconds' request latencies ---------------------------------------------------
# For the percentiles a worker reports with its heartbeat (the histogram above is
# cumulative and bucketed): one sample reservoir per second, every request offered, at
# most SAMPLES_PER_S kept (reservoir sampling keeps them uniform), so a request costs a
# counter and sometimes a list write, whatever the load.

SAMPLES_PER_S = 256


class LatencyWindow:
    """Percentiles over the last ``window_s`` seconds (whole seconds)."""

    def __init__(self, window_s: int = 10) -> None:
        self.window_s = window_s
        # second -> (requests offered, kept samples)
        self._seconds: dict[int, tuple[list[int], list[float]]] = {}

    def add(self, seconds: float, now: float | None = None) -> None:
        second = int(time.monotonic() if now is None else now)
        slot = self._seconds.get(second)
        if slot is None:
            self._prune(second)
            slot = self._seconds[second] = ([0], [])
        seen, kept = slot
        seen[0] += 1
        if len(kept) < SAMPLES_PER_S:
            kept.append(seconds)
        else:
            j = random.randrange(seen[0])
            if j < SAMPLES_PER_S:
                kept[j] = seconds

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
        for seen, kept in self._seconds.values():
            if kept:
                weight = seen[0] / len(kept)
                weighted += [(value, weight) for value in kept]
                total += seen[0]
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
