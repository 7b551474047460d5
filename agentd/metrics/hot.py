"""The metrics every request touches, kept in plain memory and folded into their
Prometheus children in batches.

prometheus-client updates a value through a lock and, in multiprocess mode, a write
into the worker's mmap'ed file, per observation: a cached chat turn cost eight of them,
a fifth of its CPU. A hot child here is a number (a counter) or bucket counts and a sum
(a histogram) in this process's memory; :meth:`HotSet.flush` adds what accumulated to
the real children (their files) and starts again from zero.

When the counts reach the files, so /metrics shows them, whichever worker renders it:

- at most :data:`FLUSH_INTERVAL_S` after an observation (a timer, set by the first
  observation after a flush, so an idle worker has none);
- at once when this worker renders /metrics or the figures of its heartbeat (it sees
  its own counts exactly; another worker's are at most that interval old);
- when the worker stops (its app's cleanup), so an exited worker's counters stay in the
  sum, as before. A worker killed outright (SIGKILL, a crash) loses at most the counts of
  its last interval.

Flushes run on the event loop's thread, as the observations do: no lock is needed.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from typing import Any

__all__ = ("FLUSH_INTERVAL_S", "HotCounter", "HotHistogram", "HotSet")

FLUSH_INTERVAL_S = 0.25


class HotSet:
    """The hot children of one :class:`~.worker.Metrics`, and when they are flushed."""

    __slots__ = ("armed", "children", "timer")

    def __init__(self) -> None:
        self.children: list[HotCounter | HotHistogram] = []
        # A flush is due (a timer runs): observations only add.
        self.armed = False
        self.timer: asyncio.TimerHandle | None = None

    def arm(self) -> None:
        """Flush within FLUSH_INTERVAL_S: called by the first observation after a flush."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a synchronous caller): flushed when read
        self.armed = True
        self.timer = loop.call_later(FLUSH_INTERVAL_S, self.flush)

    def flush(self) -> None:
        """Add every child's counts to its Prometheus child and start again from zero."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.armed = False
        for child in self.children:
            child.flush()


class HotCounter:
    """One labelled child of a Counter, counted in memory."""

    __slots__ = ("child", "hot", "pending")

    def __init__(self, child: Any, hot: HotSet) -> None:
        self.child = child
        self.hot = hot
        self.pending = 0
        hot.children.append(self)

    def inc(self) -> None:
        self.pending += 1
        if not self.hot.armed:
            self.hot.arm()

    def value(self) -> float:
        """This process's count, flushed or not."""
        return self.child._value.get() + self.pending  # type: ignore[no-any-return]

    def flush(self) -> None:
        if self.pending:
            pending, self.pending = self.pending, 0
            self.child.inc(pending)


class HotHistogram:
    """One labelled child of a Histogram, its buckets counted in memory. An observation
    lands in the bucket prometheus-client's ``observe`` puts it in: the first whose
    upper bound is at least the value."""

    __slots__ = ("bounds", "child", "counts", "hot", "total")

    def __init__(self, child: Any, hot: HotSet) -> None:
        self.child = child
        self.hot = hot
        self.bounds: list[float] = list(child._upper_bounds)  # the last is +Inf
        self.counts = [0] * len(self.bounds)
        self.total = 0.0
        hot.children.append(self)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        if not self.hot.armed:
            self.hot.arm()

    def observe_zero(self) -> None:
        """``observe(0.0)``: the first bucket whose bound is at least 0, the sum as it was."""
        self.counts[bisect_left(self.bounds, 0.0)] += 1
        if not self.hot.armed:
            self.hot.arm()

    def flush(self) -> None:
        counts = self.counts
        if not any(counts):
            return
        buckets = self.child._buckets
        for i, n in enumerate(counts):
            if n:
                buckets[i].inc(n)
                counts[i] = 0
        total, self.total = self.total, 0.0
        self.child._sum.inc(total)
