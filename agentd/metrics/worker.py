"""A worker's own metrics: HTTP requests, WebSockets, turns and their stages, the
cache, the store's waits and replica reads; and the rendering of the instance's
metrics (every worker's) for ``/metrics``."""

from __future__ import annotations

import os
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .hot import HotCounter, HotHistogram, HotSet
from .latency import LatencyWindow
from .process import ENV, render

__all__ = ("CONTENT_TYPE", "LATENCY_BUCKETS", "STEP_BUCKETS", "Metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Model calls in one turn of the tool loop (bounded by [tools] max_steps).
STEP_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32, 64)
# Latency buckets from 0.5 ms: most agentd answers that do not call a model are sub-ms.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
)  # fmt: skip


class Metrics:
    """A worker's metrics; created after fork so its files carry the worker's pid.

    The request's, the turn stages', the cache look-ups' and (through a
    :class:`~.backends.BackendMetrics` made with it) the model calls' are hot
    (:mod:`.hot`): kept in memory and flushed to the files in batches; :meth:`flush`
    (on the event loop's thread) before reading them from the files."""

    def __init__(self) -> None:
        # In multiprocess mode values live in files and the registry is built per scrape;
        # otherwise (an app embedded in tests or another program) this registry is it.
        self._registry = None if os.environ.get(ENV) else CollectorRegistry()
        reg = self._registry
        self.requests = Counter(
            "agentd_http_requests",
            "HTTP requests answered",
            ["route", "method", "status"],
            registry=reg,
        )
        self.latency = Histogram(
            "agentd_http_request_duration_seconds",
            "Time from request start to response prepared",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.websockets = Gauge(
            "agentd_websocket_connections",
            "Open WebSocket connections",
            multiprocess_mode="livesum",
            registry=reg,
        )
        self.websocket_overflows = Counter(
            "agentd_websocket_send_overflows",
            "WebSocket connections closed with 1013 because their send queue was full (a "
            "client that reads more slowly than its frames come)",
            registry=reg,
        )
        self.turn_steps = Histogram(
            "agentd_turn_steps",
            "Model calls per turn of an agent with tools (its loop's steps), by agent",
            ["agent"],
            buckets=STEP_BUCKETS,
            registry=reg,
        )
        self.turn_stages = Histogram(
            "agentd_turn_stage_seconds",
            "Time a chat turn spends per stage (the stages of its Server-Timing header)",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.cache_lookups = Counter(
            "agentd_cache_lookups",
            "Response cache outcomes: hit-l1, hit-l2, hit-l3, miss, coalesced (a miss that "
            "followed an identical request in flight)",
            ["result"],
            registry=reg,
        )
        self.cache_l1_bytes = Gauge(
            "agentd_cache_l1_bytes",
            "Bytes in the L1 response caches of the live workers",
            multiprocess_mode="livesum",
            registry=reg,
        )
        self.cache_l3_bytes = Gauge(
            "agentd_cache_l3_bytes",
            "Bytes in the instance's L3 response cache file",
            multiprocess_mode="livemax",
            registry=reg,
        )
        self.store_waits = Counter(
            "agentd_store_waits",
            "Durable acknowledgements' waits for Redis replicas (redis.wait_replicas), by "
            "outcome: confirmed, timed_out (answered 503 store_not_durable), refused",
            ["outcome"],
            registry=reg,
        )
        self.replica_reads = Counter(
            "agentd_store_replica_reads",
            "Reads of the kinds in redis.replica_reads (state, cache, keys), by who answered: "
            "replica, fallback (the replica failed, its master answered), master (no replica "
            "fresh enough)",
            ["kind", "outcome"],
            registry=reg,
        )
        self.hot = HotSet()
        self._stages = {
            stage: HotHistogram(self.turn_stages.labels(stage), self.hot)
            for stage in ("session", "upstream_ttft", "upstream", "tools", "persist")
        }
        self._children: dict[tuple[str, str, int], tuple[HotCounter, HotHistogram]] = {}
        self._latencies: dict[str, HotHistogram] = {}
        self._lookups: dict[str, HotCounter] = {}
        # The last seconds' latencies, for the service registry's stats.
        self.recent = LatencyWindow()

    def observe_turn(self, stages: Mapping[str, float]) -> None:
        """Observe the stages a turn went through, and only those: a stage it skipped
        (the session of a stateless turn) is no sample, rather than a zero."""
        for stage, seconds in stages.items():
            self._stages[stage].observe(seconds)

    def observe_replay(self, replied: bool) -> None:
        """``observe_turn`` of a stateless turn replayed from the L1 at once: its upstream
        stage took no time (and its first token none, when it said something)."""
        stages = self._stages
        stages["upstream"].observe_zero()
        if replied:
            stages["upstream_ttft"].observe_zero()

    def observe_wait(self, outcome: str) -> None:
        """Count one durable acknowledgement's wait by outcome."""
        self.store_waits.labels(outcome).inc()

    def observe_replica_read(self, kind: str, outcome: str) -> None:
        self.replica_reads.labels(kind, outcome).inc()

    def observe_steps(self, agent: str, steps: int) -> None:
        self.turn_steps.labels(agent).observe(steps)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        pair = self._children.get((route, method, status))
        if pair is None:
            pair = self._request_children(route, method, status)
        pair[0].inc()
        pair[1].observe(seconds)
        self.recent.add(seconds)

    def _request_children(
        self, route: str, method: str, status: int
    ) -> tuple[HotCounter, HotHistogram]:
        latency = self._latencies.get(route)
        if latency is None:
            latency = self._latencies[route] = HotHistogram(self.latency.labels(route), self.hot)
        counter = HotCounter(self.requests.labels(route, method, str(status)), self.hot)
        pair = self._children[(route, method, status)] = (counter, latency)
        return pair

    def count_lookup(self, result: str) -> None:
        """Count a cache look-up's outcome (``hit-l1`` .. ``miss``, ``coalesced``)."""
        counter = self._lookups.get(result)
        if counter is None:
            counter = self._lookups[result] = HotCounter(
                self.cache_lookups.labels(result), self.hot
            )
        counter.inc()

    def request_totals(self) -> tuple[int, int]:
        """This process's requests answered, and those of them answered 5xx."""
        requests = errors = 0
        for (_, _, status), (counter, _) in list(self._children.items()):
            n = int(counter.value())
            requests += n
            if status >= 500:
                errors += n
        return requests, errors

    def flush(self) -> None:
        """Write the hot metrics' counts to their files (on the event loop's thread)."""
        self.hot.flush()

    def render(self, flush: bool = True) -> bytes:
        """The instance-wide metrics (all workers) in Prometheus text format; this
        worker's hot counts flushed first unless ``flush`` is False (a caller in another
        thread, which flushed on the loop's before)."""
        if flush:
            self.hot.flush()
        return render(self._registry)
