"""Commands a Redis Cluster refused without running them, and how long they are retried.

A refused command did not run, so trying it again is safe: ``CLUSTERDOWN`` /
``MASTERDOWN`` (a master being replaced), a refused connection (a slot map read before a
promotion named the dead master), ``TRYAGAIN`` (a command on keys split between the two
nodes of a migrating slot), and redis-py giving up after too many redirections (the
``ASK``, ``TRYAGAIN`` from the importing node, ``MOVED`` back round that a command on a
migrating slot makes). A failure is retried within ``redis.timeout`` of the first try,
as any wait on the cluster; a migration within ``redis.migration_wait``, as a slot takes
as long to move as its keys do (its size and the load decide), and a command on it is
refused until its last key has moved (docs/operations.md).
"""

from __future__ import annotations

import time

from redis import exceptions as rexc

from ...config import RedisConfig

__all__ = ("REFUSED_ERRORS", "Backoff", "migrating")

# TRYAGAIN, CLUSTERDOWN / MASTERDOWN, and redis-py's "TTL exhausted" (redirections).
REFUSED_ERRORS: tuple[type[BaseException], ...] = (rexc.TryAgainError, rexc.ClusterError)
# The first pause before trying again (doubled each time, up to the longest): short, as a
# slot's keys move in batches of milliseconds.
FIRST_PAUSE_S = 0.05
LONGEST_PAUSE_S = 0.25


def migrating(exc: BaseException) -> bool:
    """Whether ``exc`` is a refusal that lasts while a slot migrates (not a failure)."""
    return isinstance(exc, rexc.TryAgainError) or type(exc) is rexc.ClusterError


class Backoff:
    """The pauses between the tries of one call, and when they stop."""

    def __init__(self, config: RedisConfig) -> None:
        self.first = time.monotonic()
        self.config = config
        self.delay = FIRST_PAUSE_S

    def next_pause(self, exc: BaseException) -> float | None:
        """The pause before trying again after ``exc``; None when out of time."""
        limit = self.config.timeout
        if migrating(exc):
            limit = max(limit, self.config.migration_wait)
        delay = self.delay
        if time.monotonic() + delay >= self.first + limit:
            return None
        self.delay = min(delay * 2, LONGEST_PAUSE_S)
        return delay
