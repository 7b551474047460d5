"""Where a key lives: one Redis, client-side shards by hash slot, or a Redis Cluster.

In sharded mode the 16384 Redis Cluster hash slots are split over the N configured
URLs in contiguous ranges, in the order the URLs are listed: shard ``i`` owns the slots
``s`` with ``i = s * N // 16384`` (shard 0 from slot 0, shard 1 from slot
``ceil(16384 / N)``, ...). The mapping depends only on the URL list, so every instance
given the same list agrees, across restarts, and a key's slot is the one Redis Cluster
gives it, so data can move between the two layouts.

Every call goes through :meth:`Shards.call`, which maps connection failures to
:class:`~agentd.errors.StoreUnavailable` and fails fast, for ``redis.down_retry``
seconds, on a shard that was just found unreachable. Each shard (or cluster node) has
one :class:`~.outage.Outage`, which logs a failure once per outage and its end once.

In a cluster, redis-py follows MOVED and ASK (in pipelines too, command by command) and
refreshes its slot map after a connection error. A command the cluster refused without
running it (``TRYAGAIN`` while a slot's keys are half migrated, ``CLUSTERDOWN`` while a
master is being replaced, redis-py giving up after too many redirections) is retried here
with a short backoff, within ``redis.timeout`` of the first try; a connection error is
not retried (the command may have run) and fails the call at once with a 503.
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

from ...config import RedisConfig
from ...errors import Overloaded, StoreUnavailable
from ...fastpath import SLOT_COUNT, key_slot
from ..scripts import Script
from .outage import Outage

__all__ = ("UNAVAILABLE_ERRORS", "Shards")

log = logging.getLogger(__name__)

T = TypeVar("T")

# Cluster errors after which the command did not run, so trying again is safe:
# TRYAGAIN, CLUSTERDOWN / MASTERDOWN, and redis-py's "TTL exhausted" (redirections).
REFUSED_ERRORS: tuple[type[BaseException], ...] = (rexc.TryAgainError, rexc.ClusterError)
# The first pause before trying a refused command again (doubled each time).
REFUSED_BACKOFF = 0.05

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


def _refused(exc: BaseException) -> bool:
    """Whether redis-py's connection error is a refused connect (nothing was sent)."""
    return isinstance(exc.__context__ or exc.__cause__, ConnectionRefusedError)


def _inside_client(exc: BaseException) -> bool:
    """Whether ``exc`` was raised inside redis-py or the event loop's transports (uvloop's
    are compiled: their frames are named after the module ``uvloop.loop``)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get("__name__", "") if tb is not None else ""
    return str(module).startswith(("redis.", "asyncio.", "uvloop."))


def _stream_keys(args: tuple[Any, ...]) -> list[Any] | None:
    """The keys of an XREAD / XREADGROUP: the first half of what follows STREAMS."""
    for i, arg in enumerate(args[1:], 1):
        word = arg.decode() if isinstance(arg, bytes) else str(arg)
        if word.upper() == "STREAMS":
            rest = args[i + 1 :]
            return list(rest[: len(rest) // 2])
    return None


def _keep_command_table(cluster: RedisCluster) -> None:
    """Make redis-py's slot map refresh need only one reachable node, and find the keys
    of XREADGROUP with no server at all.

    After a connection error redis-py reads the slot map again and also the command table
    (COMMAND), from the first master of the map: the master that just died, until its
    replica is promoted. Every refresh then fails, and with it every call on every slot.
    The command table does not change while the servers run, so it is read once.

    redis-py asks one node (``COMMAND GETKEYS``) for the keys of a command whose keys
    move, as XREADGROUP's do; that node is the one chosen when the client started. Once
    it is down (a master failed over) every XREADGROUP fails before it is sent, on
    every stream, and queued jobs are never delivered; so stream keys are read here."""
    parser = cluster.commands_parser
    first = parser.initialize
    first_keys = parser.get_keys

    async def initialize(node: ClusterNode | None = None) -> None:
        if getattr(parser, "commands", None):
            if node is not None:
                parser.node = node  # the refreshed map's default node: a live one
            return
        await first(node)

    async def get_keys(*args: Any) -> Any:
        name = args[0].decode() if isinstance(args[0], bytes) else str(args[0])
        if name.upper() in ("XREAD", "XREADGROUP"):
            keys = _stream_keys(args)
            if keys:
                return keys
        return await first_keys(*args)

    parser.initialize = initialize  # type: ignore[method-assign]
    parser.get_keys = get_keys  # type: ignore[method-assign]


class Shards:
    """The Redis servers of one instance's config, and the routing of keys to them."""

    def __init__(self, config: RedisConfig, outages_of: Shards | None = None) -> None:
        """``outages_of``: another ``Shards`` over the same servers, whose outage trackers
        these share (so that one outage is logged once, whoever meets it)."""
        self.config = config
        self.cluster: RedisCluster | None = None
        self.clients: list[aioredis.Redis] = []
        self.urls = list(config.urls)
        self._down_until: list[float] = []
        self._outages: dict[str, Outage] = {} if outages_of is None else outages_of._outages
        self._down_nodes: set[Outage] = set()  # cluster nodes in an outage
        if config.cluster:
            nodes = []
            for url in config.urls:
                parts = urlsplit(url)
                nodes.append(ClusterNode(parts.hostname or "127.0.0.1", parts.port or 6379))
            opts = _client_options(config)
            # reinitialize_steps=0: a MOVED reply updates that slot only. By default every
            # fifth MOVED makes redis-py drop every connection to every node, failing the
            # commands in flight on them (what a slot migration under load produces).
            self.cluster = RedisCluster(startup_nodes=nodes, reinitialize_steps=0, **opts)
            _keep_command_table(self.cluster)
        else:
            opts = _client_options(config)
            opts.pop("max_connections")
            # A blocking pool: a burst beyond pool_size waits (up to redis.timeout) for a
            # connection instead of failing at once.
            self.clients = [
                aioredis.Redis.from_pool(
                    aioredis.BlockingConnectionPool.from_url(
                        url, max_connections=config.pool_size, timeout=config.timeout, **opts
                    )
                )
                for url in config.urls
            ]
            self._down_until = [0.0] * len(self.clients)
        self.shard_outages = [self.outage(self.describe(i)) for i in range(len(self.clients))]
        self.cluster_outage = self.outage("redis cluster")
        self.publish_command = "SPUBLISH" if config.cluster else "PUBLISH"

    async def start(self) -> None:
        if self.cluster is not None:
            try:
                await self.cluster.initialize()
            except (*UNAVAILABLE_ERRORS, rexc.RedisClusterException) as exc:
                # Serve anyway: requests fail with 503 until the cluster answers.
                log.error("redis cluster not reachable at start: %s", exc)

    async def close(self) -> None:
        if self.cluster is not None:
            await self.cluster.aclose()
        for client in self.clients:
            await client.aclose()

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
        return f"shard {index} ({self.urls[index]})"

    def _node_outage(self, key: str) -> Outage:
        """The outage tracker of the cluster node serving ``key`` (by the slot map now)."""
        assert self.cluster is not None
        try:
            node = self.cluster.get_node_from_key(key)
        except (rexc.RedisClusterException, rexc.RedisError, AttributeError, KeyError):
            node = None  # no slot map yet
        return self.outage(f"cluster node {node.name}" if node else "redis cluster")

    def _replaced(self) -> None:
        """End the outages of cluster nodes that no longer serve any slot (a master
        that failed over): nothing will ever succeed on them to end them."""
        assert self.cluster is not None
        primaries = {f"cluster node {n.name}" for n in self.cluster.get_primaries()}
        for outage in list(self._down_nodes):
            if not outage.down:
                self._down_nodes.discard(outage)
            elif outage.name.startswith("cluster node ") and outage.name not in primaries:
                outage.replaced()
                self._down_nodes.discard(outage)

    async def _call_cluster(self, key: str, fn: Callable[[Any], Awaitable[T]]) -> T:
        assert self.cluster is not None
        deadline = time.monotonic() + self.config.timeout
        delay = REFUSED_BACKOFF
        while True:
            outage = self._node_outage(key)
            try:
                result = await fn(self.cluster)
            except REFUSED_ERRORS as exc:
                if time.monotonic() + delay < deadline:
                    await asyncio.sleep(delay)
                    delay *= 2
                    continue
                self._node_failed(outage, exc)
                raise StoreUnavailable(f"redis cluster unavailable: {exc}") from exc
            except rexc.ConnectionError as exc:
                # A refused connection sent nothing: safe to try again, and redis-py
                # reads the slot map again first. A slot map read before a promotion
                # sends the first call to the dead master; the retry finds the new one.
                if _refused(exc) and time.monotonic() + delay < deadline:
                    await asyncio.sleep(delay)
                    delay *= 2
                    continue
                self._node_failed(outage, exc)
                raise StoreUnavailable(f"redis cluster unavailable: {exc}") from exc
            except (*UNAVAILABLE_ERRORS, rexc.RedisClusterException) as exc:
                self._node_failed(outage, exc)
                raise StoreUnavailable(f"redis cluster unavailable: {exc}") from exc
            except (RuntimeError, AttributeError) as exc:
                if not _inside_client(exc):
                    raise
                # redis-py's cluster client fails a command this way when it drops its
                # connections under it (on CLUSTERDOWN, or a slot map refresh): the
                # node was being lost, not a bug of this call.
                self._node_failed(outage, exc)
                raise StoreUnavailable(f"redis cluster unavailable: {exc!r}") from exc
            if outage.since is not None:
                outage.recovered()
                self._down_nodes.discard(outage)
            if self._down_nodes:
                self._replaced()
            return result

    def _node_failed(self, outage: Outage, exc: BaseException) -> None:
        outage.failed(exc)
        self._down_nodes.add(outage)

    async def call(self, key: str, fn: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``fn(client)`` on the client that owns ``key``; 503 if it cannot answer."""
        if self.cluster is not None:
            return await self._call_cluster(key, fn)
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
            self._down_until[index] = now + self.config.down_retry
            outage.failed(exc)
            # The idle connections went down with this one: without this, each would fail
            # one call after the shard is back (and start a new outage in the log).
            with contextlib.suppress(Exception):
                await self.clients[index].connection_pool.disconnect(inuse_connections=False)
            raise StoreUnavailable(f"{self.describe(index)} is unreachable") from exc
        if outage.since is not None:
            outage.recovered()
        return result

    async def eval(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """Run a Lua script on the keys' shard: EVALSHA, then EVAL if the server lost it
        (after a restart or failover); EVAL caches it there again."""

        async def run(client: Any) -> Any:
            try:
                return await client.evalsha(script.sha, len(keys), *keys, *args)
            except rexc.NoScriptError:
                return await client.eval(script.text, len(keys), *keys, *args)

        return await self.call(keys[0], run)

    async def unreachable(self) -> list[str]:
        """Which shards do not answer PING (for /readyz)."""
        timeout = self.config.timeout

        async def ping(probe: Callable[[], Awaitable[Any]], name: str) -> str | None:
            outage = self.outage(name)
            try:
                await asyncio.wait_for(probe(), timeout)
            # Anything: a probe's only question is whether every server answered (redis-py
            # can fail a cluster PING with an internal error while it drops connections).
            except Exception as exc:
                outage.failed(exc)
                return f"{name} unreachable: {exc or type(exc).__name__}"
            outage.recovered()
            return None

        if self.cluster is not None:
            cluster = self.cluster
            # The masters only: a lost replica takes nothing away from what is served.
            probe = lambda: cluster.ping(target_nodes=RedisCluster.PRIMARIES)  # noqa: E731
            reasons = [await ping(probe, "redis cluster")]
        else:
            reasons = await asyncio.gather(
                *(ping(c.ping, self.describe(i)) for i, c in enumerate(self.clients))
            )
        return [r for r in reasons if r]
