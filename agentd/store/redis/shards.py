"""Where a key lives: one Redis, client-side shards by hash slot, or a Redis Cluster.

In sharded mode the 16384 Redis Cluster hash slots are split over the N configured
URLs in contiguous ranges, in the order the URLs are listed: shard ``i`` owns the slots
``s`` with ``i = s * N // 16384`` (shard 0 from slot 0, shard 1 from slot
``ceil(16384 / N)``, ...). The mapping depends only on the URL list, so every instance
given the same list agrees, across restarts, and a key's slot is the one Redis Cluster
gives it, so data can move between the two layouts. A shard may be a Sentinel group
(``redis+sentinel://``, see :mod:`.sentinel`): the URL names the group, not its
current master, so a failover changes no key's shard.

Every call goes through :meth:`Shards.call`, which maps connection failures to
:class:`~agentd.errors.StoreUnavailable` and fails fast, for ``redis.down_retry``
seconds, on a shard that was just found unreachable. Each shard (or the cluster) has one
:class:`~.outage.Outage`, which logs a failure once per outage and its end once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ...config import SENTINEL_SCHEME, RedisConfig
from ...errors import Overloaded, StoreUnavailable
from ...fastpath import SLOT_COUNT, key_slot
from ..scripts import Script
from .acks import Acks, send_with_wait
from .outage import Outage
from .sentinel import SentinelGroup

__all__ = ("UNAVAILABLE_ERRORS", "Shards")

log = logging.getLogger(__name__)

T = TypeVar("T")

# Errors that mean "this shard cannot answer now", as opposed to a bad command.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    rexc.ConnectionError,
    rexc.TimeoutError,
    rexc.BusyLoadingError,
    rexc.ClusterDownError,
    rexc.TryAgainError,
    rexc.MasterDownError,
    rexc.ReadOnlyError,
    asyncio.TimeoutError,
    OSError,
)


def _client_options(config: RedisConfig) -> dict[str, Any]:
    # No retries inside redis-py: a dead shard must fail fast; callers see 503.
    return {
        "max_connections": config.pool_size,
        "socket_connect_timeout": config.connect_timeout,
        "socket_timeout": config.timeout,
        "retry": Retry(NoBackoff(), 0),
        "decode_responses": False,
    }


def _pool_exhausted(exc: BaseException) -> bool:
    return isinstance(exc, rexc.MaxConnectionsError) or str(exc).startswith(
        "No connection available"
    )


class Shards:
    """The Redis servers of one instance's config, and the routing of keys to them."""

    def __init__(self, config: RedisConfig, outages_of: Shards | None = None) -> None:
        """``outages_of``: another ``Shards`` over the same servers, whose outage trackers
        these share (so that one outage is logged once, whoever meets it)."""
        self.config = config
        self.cluster: RedisCluster | None = None
        self.clients: list[aioredis.Redis] = []
        # Per shard, its Sentinel group when it is one (None: a plain redis:// server).
        self.groups: list[SentinelGroup | None] = []
        self.urls = list(config.urls)
        self._down_until: list[float] = []
        self._outages: dict[str, Outage] = {} if outages_of is None else outages_of._outages
        # The worker's main servers, not their twin for job waits: these log what both see.
        self._main = outages_of is None
        if config.cluster:
            nodes = []
            for url in config.urls:
                parts = urlsplit(url)
                nodes.append(ClusterNode(parts.hostname or "127.0.0.1", parts.port or 6379))
            opts = _client_options(config)
            self.cluster = RedisCluster(startup_nodes=nodes, **opts)
        else:
            opts = _client_options(config)
            opts.pop("max_connections")
            # A blocking pool: a burst beyond pool_size waits (up to redis.timeout) for a
            # connection instead of failing at once.
            for url in config.urls:
                if url.startswith(SENTINEL_SCHEME):
                    group = SentinelGroup(url, config, opts, announce=self._main)
                    self.groups.append(group)
                    self.clients.append(group.client)
                    continue
                self.groups.append(None)
                pool = aioredis.BlockingConnectionPool.from_url(
                    url, max_connections=config.pool_size, timeout=config.timeout, **opts
                )
                self.clients.append(aioredis.Redis.from_pool(pool))
            self._down_until = [0.0] * len(self.clients)
        self.shard_outages = [self.outage(self.describe(i)) for i in range(len(self.clients))]
        self.cluster_outage = self.outage("redis cluster")
        self.publish_command = "SPUBLISH" if config.cluster else "PUBLISH"
        self.acks = Acks(config)

    async def start(self) -> None:
        if self.cluster is not None:
            try:
                await self.cluster.initialize()
            except (*UNAVAILABLE_ERRORS, rexc.RedisClusterException) as exc:
                # Serve anyway: requests fail with 503 until the cluster answers.
                log.error("redis cluster not reachable at start: %s", exc)
        for index, group in enumerate(self.groups):
            if group is not None and self._main:
                await self._log_master(index, group)

    async def _log_master(self, index: int, group: SentinelGroup) -> None:
        try:
            master = await group.discover()
        except (*UNAVAILABLE_ERRORS, rexc.RedisError) as exc:
            # Serve anyway: its calls fail with 503 until a sentinel names a master.
            log.error("%s: no master known to its sentinels: %s", self.describe(index), exc)
            return
        log.info("%s: master %s", self.describe(index), master)

    async def close(self) -> None:
        if self.cluster is not None:
            await self.cluster.aclose()
        for client, group in zip(self.clients, self.groups, strict=True):
            await (client.aclose() if group is None else group.close())

    def outage(self, name: str) -> Outage:
        """The one outage tracker of the server called ``name`` (made on first use)."""
        tracker = self._outages.get(name)
        if tracker is None:
            tracker = self._outages[name] = Outage(name)
        return tracker

    def shard_of(self, key: str) -> int:
        """The index of the shard owning ``key`` (single and sharded modes)."""
        return key_slot(key) * len(self.clients) // SLOT_COUNT

    def describe(self, index: int) -> str:
        group = self.groups[index] if self.groups else None
        return f"shard {index} ({self.urls[index] if group is None else group.name})"

    async def call(self, key: str, fn: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``fn(client)`` on the client that owns ``key``; 503 if it cannot answer."""
        if self.cluster is not None:
            outage = self.cluster_outage
            try:
                result = await fn(self.cluster)
            except (*UNAVAILABLE_ERRORS, rexc.RedisClusterException) as exc:
                outage.failed(exc)
                raise StoreUnavailable(f"redis cluster unavailable: {exc}") from exc
            if outage.since is not None:
                outage.recovered()
            return result
        index = self.shard_of(key)
        outage = self.shard_outages[index]
        now = time.monotonic()
        if self._down_until[index] > now:
            outage.failed("failing fast")
            raise StoreUnavailable(f"{self.describe(index)} is unreachable")
        try:
            result = await fn(self.clients[index])
        except UNAVAILABLE_ERRORS as exc:
            if _pool_exhausted(exc):
                # The shard is fine; this worker has every connection to it in use.
                raise Overloaded(
                    f"all {self.config.pool_size} connections to {self.describe(index)} are busy",
                    retry_after=1,
                ) from exc
            # From now, not from the call's start: a call that timed out took longer than
            # down_retry may be, and the shard must still fail fast after it.
            self._down_until[index] = time.monotonic() + self.config.down_retry
            outage.failed(exc)
            # The idle connections went down with this one: without this, each would fail
            # one call after the shard is back (and start a new outage in the log).
            with contextlib.suppress(Exception):
                await self.clients[index].connection_pool.disconnect(inuse_connections=False)
            raise StoreUnavailable(f"{self.describe(index)} is unreachable") from exc
        if outage.since is not None:
            # It answered: a call that timed out meanwhile must not fail it fast again.
            self._down_until[index] = 0.0
            outage.recovered()
        return result

    async def eval(
        self, script: Script, keys: list[str], args: list[Any], *, acked: bool = False
    ) -> Any:
        """Run a Lua script on the keys' shard: EVALSHA, then EVAL if the server lost it
        (after a restart or failover); EVAL caches it there again. ``acked``: a write
        agentd acknowledges, confirmed by replicas when ``redis.wait_replicas`` asks."""
        if acked and self.acks.enabled:
            return await self._eval_acked(script, keys, args)

        async def run(client: Any) -> Any:
            try:
                return await client.evalsha(script.sha, len(keys), *keys, *args)
            except rexc.NoScriptError:
                return await client.eval(script.text, len(keys), *keys, *args)

        return await self.call(keys[0], run)

    async def _eval_acked(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """The script and its wait in one round trip (see :mod:`.acks`)."""
        wait = self.acks.command()
        clustered = self.cluster is not None
        server = "redis cluster" if clustered else self.describe(self.shard_of(keys[0]))

        async def run(client: Any) -> Any:
            call = ("EVALSHA", script.sha, len(keys), *keys, *args)
            replies = await send_with_wait(client, keys[0], call, wait, clustered)
            if isinstance(replies[0], rexc.NoScriptError):
                call = ("EVAL", script.text, len(keys), *keys, *args)
                replies = await send_with_wait(client, keys[0], call, wait, clustered)
            for reply in replies:
                if isinstance(reply, BaseException) and not (
                    reply is replies[1] and isinstance(reply, rexc.ResponseError)
                ):
                    # The write failed (the wait's verdict does not matter), or the
                    # connection did: the shard's unavailability, as for any call.
                    raise reply
            return replies

        replies = await self.call(keys[0], run)
        # Outside call(): a wait that timed out is an answer from a live master.
        self.acks.check(replies[1], server)
        return replies[0]

    async def unreachable(self) -> list[str]:
        """Which shards do not answer PING (for /readyz)."""
        timeout = self.config.timeout

        async def ping(target: Any, name: str) -> str | None:
            outage = self.outage(name)
            try:
                await asyncio.wait_for(target.ping(), timeout)
            except (*UNAVAILABLE_ERRORS, rexc.RedisClusterException) as exc:
                outage.failed(exc)
                return f"{name} unreachable: {exc or type(exc).__name__}"
            outage.recovered()
            return None

        if self.cluster is not None:
            reasons = [await ping(self.cluster, "redis cluster")]
        else:
            reasons = await asyncio.gather(
                *(ping(c, self.describe(i)) for i, c in enumerate(self.clients))
            )
        return [r for r in reasons if r]
