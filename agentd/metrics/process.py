"""The instance's processes and their metric files: prometheus-client's multiprocess
mode switched on in the supervisor before it forks, a process's files dropped from the
live gauges when it exits, and the supervisor's own counters."""

from __future__ import annotations

import os
import shutil
import tempfile

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest, values
from prometheus_client import multiprocess as _mp

__all__ = (
    "ENV",
    "SupervisorMetrics",
    "counter_values",
    "enable_multiprocess",
    "process_exited",
    "remove_directory",
    "render",
)

ENV = "PROMETHEUS_MULTIPROC_DIR"


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


def render(registry: CollectorRegistry | None) -> bytes:
    """``registry`` in Prometheus text format, or, with none (multiprocess mode), what
    every process of the instance wrote."""
    if registry is not None:
        return generate_latest(registry)
    merged = CollectorRegistry()
    _mp.MultiProcessCollector(merged)
    return generate_latest(merged)


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
