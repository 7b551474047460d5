"""What the pool knows about each node: its breaker, its latency estimate and its load.

Latency signal: the time to the first chunk (TTFT). It is what a balancer can influence
(queueing on a busy node shows up there first) and it does not grow with the length of
the answer, as the total duration would.

The estimate is a *peak* EWMA (as in Finagle and linkerd): a slower sample is taken at
once, faster ones blend in with weight ``1 - exp(-elapsed / EWMA_DECAY_S)``. Read, it
also decays toward zero with the time since the last sample, so a node that lost every
comparison is tried again after a while instead of being starved on one old sample.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .types import Transport

if TYPE_CHECKING:
    from ..metrics import NodeMetrics

__all__ = ("CLOSED", "EWMA_DECAY_S", "HALF_OPEN", "OPEN", "Breaker", "Node")

CLOSED, HALF_OPEN, OPEN = 0, 1, 2
STATE_NAMES = ("closed", "half_open", "open")

EWMA_DECAY_S = 10.0
# Added to the estimate so that in-flight counts still separate nodes whose estimate is
# zero (no sample yet, or a model as fast as echo).
_EPSILON_S = 1e-4
# A failure counts as a sample this slow (or twice the estimate, if more): a node that
# fails intermittently loses comparisons until it proves itself again.
FAILURE_PENALTY_S = 0.25


class Breaker:
    """Closed → open after ``threshold`` consecutive failures; after ``cooldown`` seconds
    one probe call may pass (half-open); its success closes, its failure re-opens."""

    __slots__ = ("cooldown", "failures", "probing", "reopen_at", "state", "threshold")

    def __init__(self, threshold: int, cooldown: float) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.state = CLOSED
        self.failures = 0
        self.reopen_at = 0.0
        self.probing = False

    def ready(self, now: float) -> bool:
        """Whether a call may go to the node now (for an open breaker: as the probe)."""
        state = self.state
        if state == CLOSED:
            return True
        if state == OPEN:
            return now >= self.reopen_at
        return not self.probing

    def acquire(self, now: float) -> bool:
        """Take a call that :meth:`ready` allowed; True if it is the probe."""
        if self.state == CLOSED:
            return False
        self.state = HALF_OPEN
        self.probing = True
        return True

    def succeeded(self, probe: bool) -> None:
        if probe:
            self.state, self.probing = CLOSED, False
        if self.state == CLOSED:
            self.failures = 0
        # Late successes of calls started before the breaker opened change nothing.

    def failed(self, probe: bool, now: float) -> None:
        if probe:
            self.probing = False
            self._open(now)
        elif self.state == CLOSED:
            self.failures += 1
            if self.failures >= self.threshold:
                self._open(now)

    def released(self, probe: bool) -> None:
        """The call ended saying nothing about the node (cancelled): let another probe."""
        if probe:
            self.probing = False

    def wait(self, now: float) -> float:
        """Seconds until the node may take a call again (0 if it may now)."""
        if self.state == OPEN:
            return max(self.reopen_at - now, 0.0)
        if self.state == HALF_OPEN and self.probing:
            return self.cooldown  # unknown: the probe is still running
        return 0.0

    def _open(self, now: float) -> None:
        self.state = OPEN
        self.failures = 0
        self.reopen_at = now + self.cooldown


class Node:
    """A transport plus the pool's view of it."""

    __slots__ = (
        "background",
        "breaker",
        "ewma",
        "inflight",
        "metrics",
        "name",
        "stamp",
        "transport",
    )

    def __init__(
        self,
        transport: Transport,
        breaker: Breaker,
        metrics: NodeMetrics | None = None,
        now: float = 0.0,
    ) -> None:
        self.transport = transport
        self.name = transport.name
        self.breaker = breaker
        self.metrics = metrics
        self.inflight = 0  # this worker's calls on the node, of every class
        self.background = 0  # those of them not interactive
        self.ewma = 0.0
        self.stamp = now

    def latency(self, now: float) -> float:
        """The TTFT estimate, decayed by the time since its last sample."""
        if not self.ewma:
            return 0.0
        return self.ewma * math.exp((self.stamp - now) / EWMA_DECAY_S)

    def cost(self, now: float) -> float:
        """What p2c minimises: expected latency times the queue a new call would join."""
        return (self.latency(now) + _EPSILON_S) * (self.inflight + 1)

    def observe(self, sample: float, now: float) -> None:
        """Fold one TTFT sample into the peak EWMA."""
        if sample >= self.ewma:
            self.ewma = sample
        else:
            weight = math.exp((self.stamp - now) / EWMA_DECAY_S)
            self.ewma = self.ewma * weight + sample * (1.0 - weight)
        self.stamp = now

    def penalize(self, now: float) -> None:
        """Count a failure as a slow sample."""
        self.observe(max(2.0 * self.latency(now), FAILURE_PENALTY_S), now)

    def status(self, now: float) -> dict[str, object]:
        """A snapshot for operators (``/readyz`` details, debugging)."""
        return {
            "node": self.name,
            "breaker": STATE_NAMES[self.breaker.state],
            "inflight": self.inflight,
            "inflight_background": self.background,
            "ttft_ewma_s": round(self.latency(now), 6),
        }
