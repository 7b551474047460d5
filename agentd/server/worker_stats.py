"""The figures a worker writes with its heartbeat to the service registry: counters
(the console turns their deltas between polls into rates), the last seconds'
latency percentiles, and each backend node's load and breaker, all from what the
worker's metrics, pools and job runner already track."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..metrics import counter_values
from .keys import BACKENDS, METRICS, RUNNER, STATE

__all__ = ("snapshot",)

_CACHE_RESULTS = {"hit-l1": "l1_hits", "hit-l2": "l2_hits", "miss": "misses"}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def snapshot(app: web.Application) -> dict[str, Any]:
    """This worker's figures now (see docs/admin-api.md for each)."""
    metrics = app[METRICS]
    metrics.flush()  # the hot counts (cache look-ups) into the counters read below
    requests, errors = metrics.request_totals()
    p50, p99 = metrics.recent.percentiles(0.5, 0.99)
    cache = dict.fromkeys(_CACHE_RESULTS.values(), 0)
    for (result,), value in counter_values(metrics.cache_lookups).items():
        if result in _CACHE_RESULTS:
            cache[_CACHE_RESULTS[result]] = int(value)
    job_metrics = app[RUNNER].metrics
    jobs_done = 0
    if job_metrics is not None:
        jobs_done = int(sum(counter_values(job_metrics.finished).values()))
    backends = [
        {
            "backend": pool.name,
            "node": node["node"],
            "latency_ms": _ms(node["ttft_ewma_s"]),  # type: ignore[arg-type]
            "in_flight": node["inflight"],
            "breaker": node["breaker"],
        }
        for pool in app[BACKENDS]
        for node in pool.status()
    ]
    return {
        "requests": requests,
        "errors": errors,
        "latency_ms": {"p50": _ms(p50), "p99": _ms(p99)},
        "cache": cache,
        "jobs_done": jobs_done,
        "ws_connections": len(app[STATE].websockets),
        "backends": backends,
    }
