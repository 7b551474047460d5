"""The job queue's metrics per partition: what an autoscaler reads."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from .worker import Metrics

__all__ = ("QUEUE_BUCKETS", "JobMetrics")

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
