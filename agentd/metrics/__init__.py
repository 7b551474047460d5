"""Prometheus metrics, one view per instance over all its worker processes.

prometheus-client's multiprocess mode keeps each process's values in small mmap'ed
files under one directory that the supervisor creates before forking; ``/metrics`` in
any worker merges them. Counters of workers that exited stay in the sum (a counter never
goes backwards across a restart); ``live*`` gauges drop a process once the supervisor
calls :func:`process_exited` for it.

The families live by owner: :mod:`.worker` (a worker's own, and ``/metrics``'s
rendering), :mod:`.backends`, :mod:`.jobs`, :mod:`.tenants`, :mod:`.tools`; the
multiprocess plumbing and the supervisor's counters in :mod:`.process`; the recent
latency percentiles in :mod:`.latency`; the per-request counts, kept in memory and
written to the files in batches, in :mod:`.hot`. Import them from here.
"""

from __future__ import annotations

from .backends import BackendMetrics, NodeMetrics
from .jobs import JobMetrics
from .latency import SAMPLES_PER_S, LatencyWindow
from .process import (
    ENV,
    SupervisorMetrics,
    counter_values,
    enable_multiprocess,
    process_exited,
    remove_directory,
)
from .tenants import TENANT_LABELS, TenantMetrics
from .tools import ToolMetrics
from .worker import CONTENT_TYPE, Metrics

__all__ = (
    "CONTENT_TYPE",
    "ENV",
    "SAMPLES_PER_S",
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
