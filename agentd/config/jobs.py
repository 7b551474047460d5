"""Background responses: the job queue (``[jobs]``) and its partitions
(``[[partitions]]``)."""

from __future__ import annotations

from dataclasses import dataclass

from .fields import check_name, check_webhook_url, opt


@dataclass(frozen=True)
class JobsConfig:
    """Background responses: the job queue, its consumers and webhooks."""

    # Seconds a running job's lease lasts unless renewed (it is, every third of it): a
    # job whose worker died is taken over by another consumer after about this long.
    lease_s: float = opt(30.0, min=0.5, max=3600.0)
    # Deliveries of one job before it goes to the dead-letter stream as failed.
    max_attempts: int = opt(3, min=1, max=100)
    # Jobs waiting or running per partition; beyond it a submission gets 429.
    max_queued: int = opt(100_000, min=1, max=1_000_000_000)
    # Seconds a background turn may run (the model, the session, storing).
    timeout_s: float = opt(3600.0, min=0.1, max=7 * 86400.0)
    # Seconds a response's object is kept after it is created, and its events (for
    # resuming a stream) after the last one (at most result_ttl_s).
    result_ttl_s: int = opt(7 * 24 * 3600, min=1, max=10 * 365 * 24 * 3600)
    events_ttl_s: int = opt(24 * 3600, min=1, max=10 * 365 * 24 * 3600)
    # The default partition's jobs run at once per worker, and its streams.
    concurrency: int = opt(32, min=1, max=100_000)
    queue_shards: int = opt(4, min=1, max=1024)
    # While a worker serves interactive turns, a partition starts new jobs only while
    # fewer than this share of its concurrency run (at least one): people first.
    busy_share: float = opt(0.125, min=0.0, max=1.0)
    # Where response.completed / failed / cancelled events go ("" = nowhere); an
    # agent's own webhook_url overrides it. The signing secret is read from the
    # environment variable named here (Standard Webhooks "whsec_..." format).
    webhook_url: str = opt("", check=check_webhook_url)
    webhook_secret_env: str = opt("AGENTD_WEBHOOK_SECRET")


@dataclass(frozen=True)
class PartitionConfig:
    """A group of agents whose jobs have their own streams, limits and consumers."""

    name: str = opt("default", check=check_name)
    agents: tuple[str, ...] = opt(())
    # Jobs of this partition running at once per worker process.
    concurrency: int = opt(32, min=1, max=100_000)
    # Streams (on different hash slots) that hold the partition's queue.
    queue_shards: int = opt(4, min=1, max=1024)
    # Interactive turns of its agents one worker runs at once (0 = only the worker's
    # server.max_inflight_turns): one partition's surge cannot take every worker.
    max_inflight_turns: int = opt(0, min=0, max=1_000_000)
