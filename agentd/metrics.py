"""Prometheus metrics, one view per instance over all its worker processes.

prometheus-client's multiprocess mode keeps each process's values in small mmap'ed
files under one directory that the supervisor creates before forking; ``/metrics`` in
any worker merges them. Counters of workers that exited stay in the sum (a counter never
goes backwards across a restart); ``live*`` gauges drop a process once the supervisor
calls :func:`process_exited` for it.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client import multiprocess as _mp

__all__ = (
    "CONTENT_TYPE",
    "TENANT_LABELS",
    "BackendMetrics",
    "JobMetrics",
    "LatencyWindow",
    "Metrics",
    "NodeMetrics",
    "SupervisorMetrics",
    "TenantMetrics",
    "ToolMetrics",
    "counter_values",
    "enable_multiprocess",
    "process_exited",
    "remove_directory",
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ENV = "PROMETHEUS_MULTIPROC_DIR"

# Latency buckets from 0.5 ms: most agentd answers that do not call a model are sub-ms.
# Model calls in one turn of the tool loop (bounded by [tools] max_steps).
STEP_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32, 64)
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
)  # fmt: skip


# prometheus-client asks for the process id on every update of a value, to notice a fork
# (a system call each time, several per request): this one is remembered, and renewed in
# the child of every os.fork().
_pid = os.getpid()


def _renew_pid() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_renew_pid)


def _process_id() -> int:
    return _pid


def enable_multiprocess() -> str:
    """Create a fresh metrics directory and switch prometheus-client to it.

    Must run in the supervisor before any metric exists and before workers fork.
    """
    directory = tempfile.mkdtemp(prefix="agentd-metrics-")
    os.environ[ENV] = directory
    values.ValueClass = values.MultiProcessValue(_process_id)
    return directory


def remove_directory(directory: str) -> None:
    shutil.rmtree(directory, ignore_errors=True)


def counter_values(counter: Counter) -> dict[tuple[str, ...], float]:
    """This process's value of each labelled child of ``counter`` (in multiprocess mode,
    this process's own file, not the instance's sum)."""
    children = list(counter._metrics.items())
    return {labels: child._value.get() for labels, child in children}


def process_exited(pid: int) -> None:
    """Drop the live gauges of a process that has exited."""
    if os.environ.get(ENV):
        _mp.mark_process_dead(pid)


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


class SupervisorMetrics:
    def __init__(self) -> None:
        self.worker_restarts = Counter(
            "agentd_worker_restarts",
            "Workers restarted after exiting unexpectedly",
            ["reason"],
            registry=None,
        )
        self.workers = Gauge(
            "agentd_workers", "Worker processes serving", multiprocess_mode="livemax", registry=None
        )
        self.reloads = Counter("agentd_reloads", "Configuration reloads", ["result"], registry=None)


class Metrics:
    """A worker's metrics; created after fork so its files carry the worker's pid."""

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
        self._stages = {
            stage: self.turn_stages.labels(stage)
            for stage in ("session", "upstream_ttft", "upstream", "tools", "persist")
        }
        self._children: dict[tuple[str, str, int], tuple[object, object]] = {}
        # The last seconds' latencies, for the service registry's stats.
        self.recent = LatencyWindow()

    def observe_turn(self, stages: Mapping[str, float]) -> None:
        """Observe the stages a turn went through, and only those: a stage it skipped
        (the session of a stateless turn) is no sample, rather than a zero."""
        for stage, seconds in stages.items():
            self._stages[stage].observe(seconds)

    def observe_wait(self, outcome: str) -> None:
        """Count one durable acknowledgement's wait by outcome."""
        self.store_waits.labels(outcome).inc()

    def observe_replica_read(self, kind: str, outcome: str) -> None:
        self.replica_reads.labels(kind, outcome).inc()

    def observe_steps(self, agent: str, steps: int) -> None:
        self.turn_steps.labels(agent).observe(steps)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        pair = self._children.get(key)
        if pair is None:
            pair = (self.requests.labels(route, method, str(status)), self.latency.labels(route))
            self._children[key] = pair
        pair[0].inc()  # type: ignore[attr-defined]
        pair[1].observe(seconds)  # type: ignore[attr-defined]
        self.recent.add(seconds)

    def request_totals(self) -> tuple[int, int]:
        """This process's requests answered, and those of them answered 5xx."""
        requests = errors = 0
        for (_, _, status), (counter, _) in list(self._children.items()):
            n = int(counter._value.get())  # type: ignore[attr-defined]
            requests += n
            if status >= 500:
                errors += n
        return requests, errors

    def render(self) -> bytes:
        """The instance-wide metrics (all workers) in Prometheus text format."""
        if self._registry is not None:
            return generate_latest(self._registry)
        registry = CollectorRegistry()
        _mp.MultiProcessCollector(registry)
        return generate_latest(registry)


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
        if metrics is not None:
            reg = metrics._registry
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
        if self._registry is not None:
            return generate_latest(self._registry)
        registry = CollectorRegistry()
        _mp.MultiProcessCollector(registry)
        return generate_latest(registry)


class NodeMetrics:
    """One backend node's metric children, resolved once: the pool touches them per call."""

    __slots__ = ("_calls", "_duration", "_labels", "_owner", "breaker", "first_token")

    def __init__(self, owner: BackendMetrics, backend: str, node: str) -> None:
        self._owner = owner
        self._labels = (backend, node)
        self._calls: dict[str, Counter] = {}
        self._duration = owner.duration.labels(backend, node)
        self.first_token = owner.first_token.labels(backend, node)
        self.breaker = owner.breaker.labels(backend, node)
        self.breaker.set(0)

    def call(self, outcome: str, seconds: float) -> None:
        """Count one model call by outcome and observe its duration."""
        counter = self._calls.get(outcome)
        if counter is None:
            counter = self._owner.calls.labels(*self._labels, outcome)
            self._calls[outcome] = counter
        counter.inc()
        self._duration.observe(seconds)


# Buckets for the wait of a queued job: milliseconds when idle, up to hours in a backlog.
QUEUE_BUCKETS = (
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
)  # fmt: skip


class JobMetrics:
    """The job queue per partition: what an autoscaler reads. The queue's figures are
    the whole cluster's, read from the store by the worker that serves the scrape."""

    def __init__(self, metrics: Metrics) -> None:
        reg = metrics._registry

        def gauge(name: str, doc: str) -> Gauge:
            # Any worker may write it at a scrape: the newest value of a live one wins.
            return Gauge(name, doc, ["partition"], multiprocess_mode="livemostrecent", registry=reg)

        self.queued = gauge("agentd_jobs_queued", "Jobs waiting in the partition's queue")
        self.running = gauge(
            "agentd_jobs_running", "Jobs of the partition delivered to a worker, not yet done"
        )
        self.oldest = gauge(
            "agentd_jobs_oldest_queued_seconds", "Age of the partition's oldest waiting job"
        )
        self.dead = gauge("agentd_jobs_dead_letters", "Jobs in the partition's dead-letter stream")
        self.retries = Counter(
            "agentd_jobs_retries", "Failed attempts put back on the queue", ["partition"],
            registry=reg,
        )  # fmt: skip
        self.finished = Counter(
            "agentd_jobs_finished",
            "Jobs ended, by final status (completed, failed, cancelled, incomplete)",
            ["partition", "status"],
            registry=reg,
        )
        self.start_delay = Histogram(
            "agentd_jobs_start_delay_seconds",
            "Time from a job's submission to the start of its attempt",
            ["partition"],
            buckets=QUEUE_BUCKETS,
            registry=reg,
        )


# Tenants a worker labels by name in the per-tenant series; the others share "other".
TENANT_LABELS = 100


class TenantMetrics:
    """Requests and tokens by tenant, with bounded label cardinality: the tenants named in
    the config, then the first :data:`TENANT_LABELS` others a worker meets, get a label of
    their own; every later tenant is counted as ``other`` (a flood of tenants cannot grow
    the series without bound). Each worker picks its own first ones, so after a restart
    a tenant may move between its own label and ``other``."""

    def __init__(self, metrics: Metrics, named: tuple[str, ...] = ()) -> None:
        reg = metrics._registry
        self.requests = Counter(
            "agentd_tenant_requests",
            "Requests of API keys and connection tokens, by tenant and outcome (admitted, "
            "rate_limited, quota_exceeded)",
            ["tenant", "outcome"],
            registry=reg,
        )
        self.tokens = Counter(
            "agentd_tenant_tokens",
            "Tokens charged to a tenant, by kind (prompt, completion)",
            ["tenant", "kind"],
            registry=reg,
        )
        self._named = set(named)
        self._seen: set[str] = set()

    def label(self, tenant: str) -> str:
        if tenant in self._named or tenant in self._seen:
            return tenant
        if len(self._seen) < TENANT_LABELS:
            self._seen.add(tenant)
            return tenant
        return "other"

    def request(self, tenant: str, outcome: str, n: int = 1) -> None:
        self.requests.labels(self.label(tenant), outcome).inc(n)

    def charged(self, tenant: str, prompt: int, completion: int) -> None:
        label = self.label(tenant)
        if prompt:
            self.tokens.labels(label, "prompt").inc(prompt)
        if completion:
            self.tokens.labels(label, "completion").inc(completion)


# Tool calls take from milliseconds (a local lookup) to minutes (a crawl, a build).
TOOL_BUCKETS = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip


class ToolMetrics:
    """MCP tool calls of a worker: by server, tool and outcome (ok, error, timeout,
    unavailable, failed, cancelled), and their latency by server and tool. Tool names come from
    the configured servers' lists, so the series stay bounded."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        if metrics is not None:
            reg = metrics._registry
        else:
            reg = None if os.environ.get(ENV) else CollectorRegistry()
        self._registry = reg
        self.calls = Counter(
            "agentd_tool_calls",
            "Tool calls (MCP servers', and agentd's own as server \"agentd\") by server, "
            "tool and outcome (ok, error, timeout, unavailable, failed, cancelled)",
            ["server", "tool", "outcome"],
            registry=reg,
        )
        self.duration = Histogram(
            "agentd_tool_duration_seconds",
            "Time from starting an MCP tool call to its result, by server and tool",
            ["server", "tool"],
            buckets=TOOL_BUCKETS,
            registry=reg,
        )

    def call(self, server: str, tool: str, outcome: str, seconds: float) -> None:
        self.calls.labels(server, tool, outcome).inc()
        self.duration.labels(server, tool).observe(seconds)

    def render(self) -> bytes:
        """These metrics alone (tests); in a worker, ``Metrics.render`` shows them."""
        if self._registry is not None:
            return generate_latest(self._registry)
        registry = CollectorRegistry()
        _mp.MultiProcessCollector(registry)
        return generate_latest(registry)
