"""Model-call metrics: calls by outcome, latency, breaker state, calls in flight and
waiting, per backend node. With a worker's :class:`~.worker.Metrics`, the per-call ones
(calls, duration, first token) are hot (:mod:`.hot`): counted in memory, flushed in
batches with the worker's other hot metrics."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .hot import HotCounter, HotHistogram, HotSet
from .process import ENV, render
from .worker import Metrics

__all__ = ("UPSTREAM_BUCKETS", "BackendMetrics", "NodeMetrics")

# Buckets for model calls: first tokens arrive in milliseconds to seconds, whole replies
# may take minutes.
UPSTREAM_BUCKETS = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
    300.0,
)  # fmt: skip


class BackendMetrics:
    """Model-call metrics of a worker: calls by outcome, latency and breaker state per node.

    Pass the worker's :class:`Metrics` so its ``render`` includes these (outside
    multiprocess mode they share its registry); create at most one per ``Metrics``.
    """

    def __init__(self, metrics: Metrics | None = None) -> None:
        self._hot: HotSet | None = None
        if metrics is not None:
            reg = metrics._registry
            self._hot = metrics.hot
        else:
            reg = None if os.environ.get(ENV) else CollectorRegistry()
        self._registry = reg
        labels = ["backend", "node"]
        self.calls = Counter(
            "agentd_upstream_calls",
            "Model calls by node and outcome (ok, error, timeout, rejected, cancelled)",
            [*labels, "outcome"],
            registry=reg,
        )
        self.duration = Histogram(
            "agentd_upstream_duration_seconds",
            "Time from sending a model call to its last chunk (or its failure)",
            labels,
            buckets=UPSTREAM_BUCKETS,
            registry=reg,
        )
        self.first_token = Histogram(
            "agentd_upstream_first_token_seconds",
            "Time from sending a model call to its first chunk",
            labels,
            buckets=UPSTREAM_BUCKETS,
            registry=reg,
        )
        self.breaker = Gauge(
            "agentd_upstream_breaker_state",
            "Node breaker: 0 closed, 1 half-open, 2 open (the worst over live workers)",
            labels,
            multiprocess_mode="livemax",
            registry=reg,
        )

        self.inflight = Gauge(
            "agentd_upstream_inflight",
            "Model calls in flight per node by kind (interactive, background), live workers",
            [*labels, "kind"],
            multiprocess_mode="livesum",
            registry=reg,
        )
        self.waiting = Gauge(
            "agentd_upstream_waiting",
            "Model calls waiting for a node with room (max_inflight) by kind, live workers",
            ["backend", "kind"],
            multiprocess_mode="livesum",
            registry=reg,
        )

    def node(self, backend: str, node: str) -> NodeMetrics:
        """The metric children of one node (resolve once, use per call)."""
        return NodeMetrics(self, backend, node)

    def render(self) -> bytes:
        """These metrics alone (tests); in a worker, ``Metrics.render`` shows them."""
        return render(self._registry)


class NodeMetrics:
    """One backend node's metric children, resolved once: the pool touches them per call."""

    __slots__ = ("_calls", "_duration", "_labels", "_owner", "breaker", "first_token")

    def __init__(self, owner: BackendMetrics, backend: str, node: str) -> None:
        self._owner = owner
        self._labels = (backend, node)
        self._calls: dict[str, Counter | HotCounter] = {}
        duration = owner.duration.labels(backend, node)
        first_token = owner.first_token.labels(backend, node)
        hot = owner._hot
        self._duration = duration if hot is None else HotHistogram(duration, hot)
        self.first_token = first_token if hot is None else HotHistogram(first_token, hot)
        self.breaker = owner.breaker.labels(backend, node)
        self.breaker.set(0)

    def call(self, outcome: str, seconds: float) -> None:
        """Count one model call by outcome and observe its duration."""
        counter = self._calls.get(outcome)
        if counter is None:
            counter = child = self._owner.calls.labels(*self._labels, outcome)
            if self._owner._hot is not None:
                counter = HotCounter(child, self._owner._hot)
            self._calls[outcome] = counter
        counter.inc()
        self._duration.observe(seconds)
