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
seconds, on a shard that was just found unreachable; a script call on a plain shard
(not a Sentinel group, no reshard in progress) takes the quick path of :mod:`.quick`
instead, with the same handling of failures. Each shard (or cluster node) has
one :class:`~.outage.Outage`, which logs a failure once per outage and its end once.

In a cluster, redis-py follows MOVED and ASK (in pipelines too, command by command) and
refreshes its slot map after a connection error. A command the cluster refused without
running it (``TRYAGAIN`` while a slot migrates, ``CLUSTERDOWN`` while a master is being
replaced, redis-py giving up after too many redirections) is retried here with a short
backoff, for as long as :mod:`.refusals` says; a connection error is not retried (the
command may have run) and fails the call at once with a 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError
from redis.backoff import NoBackoff

from ...config import SENTINEL_SCHEME, RedisConfig, redact_url
from ...errors import Overloaded, StoreFull, StoreUnavailable
from ...fastpath import SLOT_COUNT, key_slot
from ..scripts import Script
from .acks import Acks, send_with_wait
from .asking import keep_asking_on_its_connection
from .idle import POOL_OPTIONS
from .moving import CONTROL, RECHECK_S, Moving
from .outage import Outage
from .quick import Orphan, QuickCalls, quick_calls
from .refusals import REFUSED_ERRORS, Backoff
from .replicas import Replicas, master_of, masters_of
from .sentinel import SentinelGroup, open_server

__all__ = ("UNAVAILABLE_ERRORS", "Shards", "once_more_if_broken")

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
    # No retries inside redis-py: a dead shard must fail fast; callers see 503. A
    # connection the server closed while idle is not used (see idle.py).
    return {
        "max_connections": config.pool_size,
        "socket_connect_timeout": config.connect_timeout,
        "socket_timeout": config.timeout,
        "retry": Retry(NoBackoff(), 0),
        "decode_responses": False,
        **POOL_OPTIONS,
    }


def _pool_exhausted(exc: BaseException) -> bool:
    return isinstance(exc, rexc.MaxConnectionsError) or str(exc).startswith(
        "No connection available"
    )


def _full(server: str) -> StoreFull:
    # The server answers (no outage): it refuses writes at its maxmemory (noeviction).
    return StoreFull(f"{server} is full (maxmemory): it refuses writes", retry_after=1)


def refused(exc: BaseException) -> bool:
    """Whether redis-py's connection error is a refused connect (nothing was sent)."""
    return isinstance(exc.__context__ or exc.__cause__, ConnectionRefusedError)


def broke(exc: BaseException) -> bool:
    """Whether ``exc`` is a connection that broke under a call (closed, reset), as opposed
    to a server that cannot be reached (refused, no master named by the sentinels), a pool
    with no connection free, or a timeout (a frozen server)."""
    return isinstance(exc, rexc.ConnectionError) and not (
        refused(exc) or _pool_exhausted(exc) or isinstance(exc, MasterNotFoundError)
    )


def once_more_if_broken(fn: Callable[[Any], Awaitable[T]]) -> Callable[[Any], Awaitable[T]]:
    """``fn``, run once more (on another connection) if its connection broke under it.

    Only for calls that may run twice: reads, and the job queue's blocking read (see
    queue.py). A server that closed the connection as the call was sent (the one case
    the check before use cannot see, idle.py) then costs no error. A write may have been
    applied before its connection broke: never sent again (docs/operations.md)."""

    async def call(client: Any) -> T:
        try:
            return await fn(client)
        except rexc.ConnectionError as exc:
            if not broke(exc):
                raise
        return await fn(client)

    return call


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


def _hand_over(call: asyncio.Future[Any], orphan: Orphan) -> None:
    """The reply of a call whose caller was cancelled, to ``orphan`` (if it came)."""
    if not call.cancelled() and call.exception() is None:
        orphan(call.result())


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
        # Per shard, its Sentinel group when it is one (None: a plain redis:// server).
        self.groups: list[SentinelGroup | None] = []
        self.urls = list(config.urls)
        self._down_until: list[float] = []
        self._outages: dict[str, Outage] = {} if outages_of is None else outages_of._outages
        # The worker's main servers, not their twin for job waits: these log what both see.
        self._main = outages_of is None
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
            keep_asking_on_its_connection()
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
        # Per shard, its quick path for script calls (None: redis-py's; see quick.py).
        self.quick = [
            quick_calls(c) if g is None else None
            for c, g in zip(self.clients, self.groups, strict=True)
        ]
        self.shard_outages = [self.outage(self.describe(i)) for i in range(len(self.clients))]
        self.cluster_outage = self.outage("redis cluster")
        self.publish_command = "SPUBLISH" if config.cluster else "PUBLISH"
        self.acks = Acks(config)
        # Reads of the kinds in redis.replica_reads, served by fresh replicas (replicas.py).
        self.replicas = (
            Replicas(config, lambda: masters_of(self), readonly=config.cluster)
            if config.replica_reads and self._main
            else None
        )
        # A reshard to this URL list in progress: keys of moving slots are pulled from
        # their old shard before use (see moving.py).
        self.moving: Moving | None = None
        self._extra: dict[str, aioredis.Redis] = {}  # its servers not in this list
        self._extra_groups: dict[str, SentinelGroup] = {}  # those that are Sentinel groups
        self._looking: asyncio.Task[None] | None = None
        self._unsure = False  # the last look for a reshard failed
        self._switching: asyncio.TimerHandle | None = None
        self._worker_id = f"{socket.gethostname()}:{os.getpid()}"  # one heartbeat a process
        # Called when keys change server (a reshard's switch): pub/sub follows them.
        self.on_reroute: list[Callable[[], None]] = []

    async def start(self) -> None:
        if self.cluster is not None:
            try:
                await self.cluster.initialize()
            except (*UNAVAILABLE_ERRORS, rexc.RedisClusterException) as exc:
                # Serve anyway: requests fail with 503 until the cluster answers.
                log.error("redis cluster not reachable at start: %s", exc)
        elif self.clients:
            await self.follow_reshard()
        for index, group in enumerate(self.groups):
            if group is not None and self._main:
                await self._log_master(index, group)
        if self.replicas is not None:
            self.replicas.start()

    async def _log_master(self, index: int, group: SentinelGroup) -> None:
        try:
            master = await group.discover()
        except (*UNAVAILABLE_ERRORS, rexc.RedisError) as exc:
            # Serve anyway: its calls fail with 503 until a sentinel names a master.
            log.error("%s: no master known to its sentinels: %s", self.describe(index), exc)
            return
        log.info("%s: master %s", self.describe(index), master)

    async def follow_reshard(self) -> None:
        await self._look()
        self._look_again()

    async def _look(self) -> None:
        """Look for a reshard plan of this URL list on the first server: follow it (and
        its switch time), or stop following one that ended (see moving.py). At start,
        then every RECHECK_S while following one."""
        try:
            local = time.monotonic()
            old, new, switch_at, server_ms = await Moving.load(self.clients[0], self.urls)
            if old:
                side = "old" if old == self.urls else "new"
                ttl = int(RECHECK_S * 3000)
                await self.clients[0].set(f"{CONTROL}:w:{self._worker_id}", side, px=ttl)
        except (*UNAVAILABLE_ERRORS, rexc.RedisError) as exc:
            # Until it knows, keep looking: a reshard it missed would hide moving keys.
            if not self._unsure:
                log.warning("cannot look for a reshard on %s: %s", self.describe(0), exc)
            self._unsure = True
            return
        self._unsure = False
        if not old:
            if self.moving is not None:
                log.info("reshard ended: every key is on its shard of the new list")
                self.moving = None
                self._rerouted()
            return
        if self.moving is None or (self.moving.old, self.moving.new) != (old, new):
            opts = _client_options(self.config)
            for url in [*old, *new]:
                if url not in self.urls and url not in self._extra:
                    self._extra[url], group = open_server(url, self.config, opts)
                    if group is not None:
                        self._extra_groups[url] = group
            self.moving = Moving(old, new)
            log.info("following the reshard from %s to %s", old, new)
            self._rerouted()
        if self.moving.set_switch(switch_at, server_ms, local):
            delay = max(0.0, (self.moving.switch_mono or 0) - time.monotonic())
            log.info("reshard: the new shards serve the moving slots in %.1fs", delay)
            if self._switching is not None:
                self._switching.cancel()
            self._switching = asyncio.get_running_loop().call_later(delay, self._switched)

    def _switched(self) -> None:
        """At the switch time: the moving slots' keys are on their new servers now."""
        if self.moving is not None and not self.moving.pulling():
            # An event loop's timer may fire a little before the monotonic clock reaches
            # the moment (uvloop counts whole milliseconds): come back then.
            self._switching = asyncio.get_running_loop().call_later(0.002, self._switched)
            return
        self._rerouted()

    def _look_again(self) -> None:
        running = self._looking is not None and not self._looking.done()
        if not running and (self.moving is not None or self._unsure):
            self._looking = asyncio.create_task(self._keep_looking())

    async def _keep_looking(self) -> None:
        """Look at the plan every RECHECK_S while one is followed (or unknown), whether
        or not this worker is busy: it must know the switch time before it comes."""
        while self.moving is not None or self._unsure:
            await asyncio.sleep(RECHECK_S)
            await self._look()

    def _rerouted(self) -> None:
        for callback in self.on_reroute:
            callback()

    def server_of(self, key: str) -> tuple[str, aioredis.Redis, Outage, SentinelGroup | None]:
        """(name, client, outage tracker, Sentinel group or None) of the server that
        serves ``key`` now, a reshard's moves included (for pub/sub; not in a cluster)."""
        index = self.shard_of(key)
        if self.moving is not None:
            route = self.moving.route(key)
            if route is not None and route[0] not in self.urls:
                name = f"shard ({route[0]})"
                group = self._extra_groups.get(route[0])
                return name, self._extra[route[0]], self.outage(name), group
            if route is not None:
                index = self.urls.index(route[0])
        group = self.groups[index] if self.groups else None
        return self.describe(index), self.clients[index], self.shard_outages[index], group

    def _wait_ms(self, url: str) -> int:
        return int(self.config.timeout * 500) if url.startswith(SENTINEL_SCHEME) else 0

    def _client_of(self, url: str) -> aioredis.Redis:
        if url in self.urls:
            return self.clients[self.urls.index(url)]
        return self._extra[url]

    async def _moving_call(
        self, key: str, keys: list[str], fn: Callable[[Any], Awaitable[T]]
    ) -> tuple[bool, T | None, int]:
        """Route a key of a reshard's moving slot: (handled here, result, else the own
        shard index to call as usual)."""
        moving = self.moving
        assert moving is not None
        route = moving.route(key)
        if route is None:
            return False, None, self.shard_of(key)
        target, source = route
        try:
            if source is not None:
                # A replica of a Sentinel group confirms each side's writes (moving.py).
                waits = (self._wait_ms(source), self._wait_ms(target))
                await moving.pull(keys, self._client_of(source), self._client_of(target), waits)
            if target in self.urls:
                return False, None, self.urls.index(target)
            return True, await fn(self._extra[target]), 0
        except UNAVAILABLE_ERRORS as exc:
            raise StoreUnavailable(f"reshard: {target} or {source} unreachable: {exc}") from exc

    async def close(self) -> None:
        if self.replicas is not None:
            await self.replicas.close()
        if self.cluster is not None:
            await self.cluster.aclose()
        if self._looking is not None:
            self._looking.cancel()
        if self._switching is not None:
            self._switching.cancel()
        if self.moving is not None:
            with contextlib.suppress(Exception):  # a heartbeat no longer: this one is gone
                await self.clients[0].delete(f"{CONTROL}:w:{self._worker_id}")
        for url, client in self._extra.items():
            group = self._extra_groups.get(url)
            await (client.aclose() if group is None else group.close())
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
        # Outage names reach clients in 503 messages: never a password.
        return f"shard {index} ({redact_url(self.urls[index]) if group is None else group.name})"

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
        backoff = Backoff(self.config)
        while True:
            outage = self._node_outage(key)
            try:
                result = await fn(self.cluster)
            except rexc.OutOfMemoryError as exc:
                raise _full("a redis cluster node") from exc
            except REFUSED_ERRORS as exc:
                if (pause := backoff.next_pause(exc)) is not None:
                    await asyncio.sleep(pause)
                    continue
                self._node_failed(outage, exc)
                raise StoreUnavailable(f"redis cluster unavailable: {exc}") from exc
            except rexc.ConnectionError as exc:
                # A refused connection sent nothing: safe to try again, and redis-py
                # reads the slot map again first. A slot map read before a promotion
                # sends the first call to the dead master; the retry finds the new one.
                if refused(exc) and (pause := backoff.next_pause(exc)) is not None:
                    await asyncio.sleep(pause)
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

    async def call(
        self, key: str, fn: Callable[[Any], Awaitable[T]], keys: list[str] | None = None
    ) -> T:
        """Run ``fn(client)`` on the client that owns ``key`` (and ``keys``, all of its
        slot, which ``fn`` uses); 503 if it cannot answer."""
        if self.cluster is not None:
            return await self._call_cluster(key, fn)
        now = time.monotonic()
        if self.moving is None:
            index = self.shard_of(key)
        else:
            handled, answer, index = await self._moving_call(key, keys or [key], fn)
            if handled:
                return answer  # type: ignore[return-value]
        self._fail_fast(index, now)
        try:
            result = await fn(self.clients[index])
        except rexc.OutOfMemoryError as exc:
            raise _full(self.describe(index)) from exc
        except UNAVAILABLE_ERRORS as exc:
            await self._shard_failed(index, exc)
        self._answered(index)
        return result

    def _fail_fast(self, index: int, now: float) -> None:
        """503 at once while the shard is in its ``down_retry`` after a failure."""
        if self._down_until[index] > now:
            self.shard_outages[index].failed("failing fast")
            raise StoreUnavailable(f"{self.describe(index)} is unreachable")

    async def _shard_failed(self, index: int, exc: BaseException) -> NoReturn:
        """A call on the shard met ``exc``, one of UNAVAILABLE_ERRORS: raise the 429 of an
        exhausted pool or the 503 of an unreachable shard (which then fails fast)."""
        if _pool_exhausted(exc):
            # The shard is fine; this worker has every connection to it in use.
            raise Overloaded(
                f"all {self.config.pool_size} connections to {self.describe(index)} are busy",
                retry_after=1,
            ) from exc
        # From now, not from the call's start: a call that timed out took longer than
        # down_retry may be, and the shard must still fail fast after it.
        self._down_until[index] = time.monotonic() + self.config.down_retry
        self.shard_outages[index].failed(exc)
        # The idle connections went down with this one: without this, each would fail
        # one call after the shard is back (and start a new outage in the log).
        with contextlib.suppress(Exception):
            await self.clients[index].connection_pool.disconnect(inuse_connections=False)
        raise StoreUnavailable(f"{self.describe(index)} is unreachable") from exc

    def _answered(self, index: int) -> None:
        outage = self.shard_outages[index]
        if outage.since is not None:
            # It answered: a call that timed out meanwhile must not fail it fast again.
            self._down_until[index] = 0.0
            outage.recovered()

    async def read(
        self,
        kind: str,
        key: str,
        fn: Callable[[Any], Awaitable[T]],
        ask_master: Callable[[T], bool] | None = None,
    ) -> T:
        """A read of ``key`` (only ``key``'s slot): on a fresh replica when
        ``redis.replica_reads`` lists ``kind`` (see :mod:`.replicas`), else as :meth:`call`.
        ``ask_master``: which answers of a replica the master is asked to confirm. A read
        whose connection broke under it is sent once more (see once_more_if_broken)."""
        fn = once_more_if_broken(fn)
        if self.replicas is None or kind not in self.replicas.kinds:
            return await self.call(key, fn)
        master = master_of(self, key)
        on_master = lambda: self.call(key, fn)  # noqa: E731
        return await self.replicas.read(kind, master, fn, on_master, ask_master)

    async def eval(
        self,
        script: Script,
        keys: list[str],
        args: list[Any],
        *,
        acked: bool = False,
        orphan: Orphan | None = None,
        may_repeat: bool = False,
    ) -> Any:
        """Run a Lua script on the keys' shard: EVALSHA, then EVAL if the server lost it
        (after a restart or failover); EVAL caches it there again. ``acked``: a write
        agentd acknowledges, confirmed by replicas when ``redis.wait_replicas`` asks.
        ``orphan``: for a script that grants something (a lease) its caller must let go
        of: if the caller is cancelled once the call is sent, the call still runs to its
        end and ``orphan`` gets its reply (not with ``acked``). ``may_repeat``: a script
        that may run twice (it reads, or only writes what running it again rewrites the
        same: an expiry): sent once more if its connection broke under it."""
        if acked and self.acks.enabled:
            return await self._eval_acked(script, keys, args)
        if self.moving is None and self.cluster is None:
            # One shard's plain pool: the quick path (see quick.py).
            index = self.shard_of(keys[0])
            quick = self.quick[index]
            if quick is not None:
                return await self._eval_quick(index, quick, script, keys, args, orphan, may_repeat)

        async def run(client: Any) -> Any:
            try:
                return await client.evalsha(script.sha, len(keys), *keys, *args)
            except rexc.NoScriptError:
                return await client.eval(script.text, len(keys), *keys, *args)

        if may_repeat:
            run = once_more_if_broken(run)

        if orphan is None:
            return await self.call(keys[0], run, keys)
        call = asyncio.ensure_future(self.call(keys[0], run, keys))
        try:
            return await asyncio.shield(call)
        except asyncio.CancelledError:
            call.add_done_callback(lambda done: _hand_over(done, orphan))
            raise

    async def _eval_quick(
        self,
        index: int,
        quick: QuickCalls,
        script: Script,
        keys: list[str],
        args: list[Any],
        orphan: Orphan | None,
        may_repeat: bool,
    ) -> Any:
        """:meth:`eval` on a plain shard, with :meth:`call`'s handling of failures."""
        self._fail_fast(index, time.monotonic())

        call = ("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            try:
                try:
                    result = await quick.execute(call, orphan)
                except rexc.ConnectionError as exc:
                    # once_more_if_broken's rule, inline: no coroutine more per call here.
                    if not (may_repeat and broke(exc)):
                        raise
                    result = await quick.execute(call, orphan)
            except rexc.NoScriptError:
                result = await quick.execute(("EVAL", script.text, len(keys), *keys, *args), orphan)
        except rexc.OutOfMemoryError as exc:
            raise _full(self.describe(index)) from exc
        except UNAVAILABLE_ERRORS as exc:
            await self._shard_failed(index, exc)
        self._answered(index)
        return result

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

        replies = await self.call(keys[0], run, keys)
        # Outside call(): a wait that timed out is an answer from a live master.
        self.acks.check(replies[1], server)
        return replies[0]

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
