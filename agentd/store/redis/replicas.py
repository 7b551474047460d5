"""Reads served by replicas (``redis.replica_reads``): which replicas are fresh enough to
read, and this worker's connections to them.

The rule, per master (a shard, the current master of a Sentinel group, or a cluster master):
every ``replica_max_lag / 4`` seconds a worker sends ``INFO replication`` to the master
(its replication id, its offset, the addresses of its replicas) and then to each replica
(its link to the master, its replication id, the offset it has applied). A replica that
has applied the offset the master had when a check was sent at time ``s`` holds every
write acknowledged before ``s``; it is read until ``s + replica_max_lag`` and no longer,
unless a later check renews it. So a read served by a replica misses no write
acknowledged more than ``replica_max_lag`` seconds before it. A replica whose link is
down, that follows another replication history (a failover), that did not answer the
check, or that failed a read (for ``redis.down_retry`` seconds) is not read; the master is.

Replicas are learnt from the master's ``INFO`` (as Sentinel learns them), so the same
code serves a plain shard, a Sentinel group (whose master moves) and a cluster master. A
cluster replica serves reads only on a ``READONLY`` connection: each of its connections
sends it on connect (as redis-py's own cluster client does for ``read_from_replicas``).

Why not redis-py's own replica reads: the cluster client's ``read_from_replicas`` /
``load_balancing_strategy`` send every read command of the client to replicas (history
too), and ``Sentinel.slave_for`` rotates over replicas; neither knows how far behind a
replica is, and only some reads may go to one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import BlockingConnectionPool, Connection, SSLConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import SentinelManagedConnection, SentinelManagedSSLConnection
from redis.backoff import NoBackoff

from ...config import REPLICA_READS, RedisConfig
from ...errors import StoreUnavailable
from .idle import POOL_OPTIONS

__all__ = ("REPLICA_KINDS", "Replica", "Replicas", "fresh_until", "master_of", "masters_of")

log = logging.getLogger(__name__)

# The reads that may be served by a replica (the values of redis.replica_reads).
REPLICA_KINDS = REPLICA_READS

T = TypeVar("T")
Address = tuple[str, int]
# Where a master is, for the checks: its client (or its address, for a cluster master),
# and how to connect to its replicas (connection class and options).
MasterLink = tuple[aioredis.Redis | Address, type[Connection], dict[str, Any]]
# The connection options a replica shares with its master (credentials, TLS, database).
_SHARED = ("username", "password", "credential_provider", "client_name", "db", "ssl_")


def fresh_until(samples: deque[tuple[float, int]], applied: int, max_lag: float) -> float:
    """Until when a replica that has applied ``applied`` may be read: ``max_lag`` after
    the newest check of the master (sent at ``s``, the master at offset ``o``) with
    ``o <= applied``. 0 when it is behind every check still remembered."""
    for sent, offset in reversed(samples):
        if offset <= applied:
            return sent + max_lag
    return 0.0


def _ignore(kind: str, outcome: str) -> None:
    return


def _busy(exc: BaseException) -> bool:
    """Whether ``exc`` says every connection of the pool was in use (nothing was sent)."""
    return isinstance(exc, rexc.MaxConnectionsError) or str(exc).startswith(
        "No connection available"
    )


async def _readonly(connection: Connection) -> None:
    await connection.on_connect()
    await connection.send_command("READONLY")
    if await connection.read_response() not in (b"OK", "OK"):
        raise rexc.ConnectionError("READONLY refused")


@dataclass
class Replica:
    address: Address
    client: aioredis.Redis
    fresh_until: float = 0.0
    down_until: float = 0.0
    failing: bool = False  # logged once per run of failures


@dataclass
class _Master:
    replid: str = ""
    # (monotonic time the check was sent, the master's offset then), oldest first.
    samples: deque[tuple[float, int]] = field(default_factory=deque)
    replicas: dict[Address, Replica] = field(default_factory=dict)


class Replicas:
    """The replicas of every master of one ``Shards`` and how fresh each is."""

    def __init__(
        self, config: RedisConfig, masters: Callable[[], dict[str, MasterLink]], readonly: bool
    ) -> None:
        """``masters``: name → link of every master now; ``readonly``: a cluster's
        replicas (READONLY on each connection)."""
        self.config = config
        self.kinds = frozenset(config.replica_reads)
        self.max_lag = config.replica_max_lag
        self.interval = self.max_lag / 4
        self._masters_of = masters
        self._readonly = readonly
        self._masters: dict[str, _Master] = {}
        self._direct: dict[Address, aioredis.Redis] = {}  # cluster masters, for the checks
        self._task: asyncio.Task[None] | None = None
        # Reads served by replicas and reads that fell back to the master (for tests and
        # the bench, which also count them on the servers).
        self.served = 0
        self.fell_back = 0
        # observe(kind, outcome) per read of a kind replicas may serve (for /metrics):
        # "replica", "fallback" (the replica failed, the master answered), "master" (no
        # replica fresh enough).
        self.observe: Callable[[str, str], None] = _ignore

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._follow(), name="replica checks")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        for master in self._masters.values():
            for replica in master.replicas.values():
                await replica.client.aclose()
        for client in self._direct.values():
            await client.aclose()
        self._masters.clear()
        self._direct.clear()

    # -- routing -----------------------------------------------------------------------

    async def read(
        self,
        kind: str,
        master: str | None,
        fn: Callable[[Any], Awaitable[T]],
        on_master: Callable[[], Awaitable[T]],
        ask_master: Callable[[T], bool] | None = None,
    ) -> T:
        """``fn`` on a fresh replica of ``master`` if there is one, else ``on_master()``.
        A replica that fails is left for the master within ``redis.timeout`` in all; a
        replica's answer that ``ask_master`` picks (a "not found") is asked again there."""
        replica = None if master is None else self.pick(master)
        if replica is None:
            self.observe(kind, "master")
            return await on_master()
        started = time.monotonic()
        try:
            # Bounded by the replica's connection settings (see _client), not by a timer
            # per read: a timer costs a hot read more than its routing does.
            result = await fn(replica.client)
        except (TimeoutError, rexc.RedisError, OSError) as exc:
            # Unreachable, timed out, LOADING, a MOVED after a slot moved...: the master
            # answers instead (a bad command fails there again, as it would have). A
            # replica whose connections are all busy is fine: only this read moves.
            if not _busy(exc):
                self.failed(replica, exc)
            self.observe(kind, "fallback")
        else:
            self.served += 1
            self.observe(kind, "replica")
            if ask_master is None or not ask_master(result):
                return result
        left = self.config.timeout - (time.monotonic() - started)
        try:
            async with asyncio.timeout(max(left, 0.01)):
                return await on_master()
        except TimeoutError as exc:
            raise StoreUnavailable(
                "no answer within redis.timeout: a replica failed, then its master was slow"
            ) from exc

    def pick(self, master: str) -> Replica | None:
        """A replica of ``master`` fresh enough to read now, or None (read the master)."""
        state = self._masters.get(master)
        if state is None:
            return None
        now = time.monotonic()
        usable = [r for r in state.replicas.values() if r.fresh_until > now >= r.down_until]
        return random.choice(usable) if usable else None

    def failed(self, replica: Replica, exc: BaseException) -> None:
        """A read on ``replica`` failed: the master serves until it is checked fresh again
        after ``redis.down_retry``."""
        self.fell_back += 1
        replica.down_until = time.monotonic() + self.config.down_retry
        replica.fresh_until = 0.0
        if not replica.failing:
            replica.failing = True
            host, port = replica.address
            log.warning("replica %s:%s failed a read (%s); reading its master", host, port, exc)

    # -- checks ------------------------------------------------------------------------

    async def _follow(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:  # a check must never stop the checks
                log.exception("replica check failed")
            await asyncio.sleep(self.interval)

    async def check(self) -> None:
        """One round: every master and its replicas, the masters in parallel."""
        links = self._masters_of()
        for gone in set(self._masters) - set(links):
            for replica in self._masters.pop(gone).replicas.values():
                await replica.client.aclose()
        await asyncio.gather(*(self._check(name, link) for name, link in links.items()))

    async def _check(self, name: str, link: MasterLink) -> None:
        where, connection_class, kwargs = link
        if isinstance(where, tuple):
            client = self._direct.get(where)
            if client is None:
                client = self._direct[where] = self._client(where, connection_class, kwargs)
        else:
            client = where
        state = self._masters.setdefault(name, _Master())
        sent = time.monotonic()
        try:
            info = await asyncio.wait_for(client.info("replication"), self.config.timeout)
        except Exception:  # unreachable, or failing over: no replica is known fresh
            info = {}
        if info.get("role") != "master":  # (or a demoted master, not yet left)
            for replica in state.replicas.values():
                replica.fresh_until = 0.0
            return
        replid = str(info.get("master_replid", ""))
        if replid != state.replid:
            state.replid = replid
            state.samples.clear()
        state.samples.append((sent, int(info.get("master_repl_offset", 0))))
        while state.samples and state.samples[0][0] < sent - self.max_lag:
            state.samples.popleft()
        listed = set()
        for key, value in info.items():
            if key.startswith("slave") and isinstance(value, dict) and "port" in value:
                listed.add((str(value["ip"]), int(value["port"])))
        for address in set(state.replicas) - listed:
            await state.replicas.pop(address).client.aclose()
        for address in listed - set(state.replicas):
            state.replicas[address] = Replica(
                address, self._client(address, connection_class, kwargs)
            )
        await asyncio.gather(
            *(self._check_replica(state, r) for r in list(state.replicas.values()))
        )

    async def _check_replica(self, master: _Master, replica: Replica) -> None:
        try:
            info = await asyncio.wait_for(
                replica.client.info("replication"), self.config.timeout / 2
            )
        except Exception:
            replica.fresh_until = 0.0
            return
        linked = (
            info.get("role") == "slave"
            and info.get("master_link_status") == "up"
            and str(info.get("master_replid", "")) == master.replid
        )
        applied = int(info.get("slave_repl_offset", -1))
        replica.fresh_until = fresh_until(master.samples, applied, self.max_lag) if linked else 0.0
        if replica.fresh_until and time.monotonic() >= replica.down_until and replica.failing:
            replica.failing = False
            log.warning("replica %s:%s serves reads again", *replica.address)

    def _client(
        self, address: Address, connection_class: type[Connection], kwargs: dict[str, Any]
    ) -> aioredis.Redis:
        """Connections to one replica: the master's options (credentials, TLS, database),
        and a quarter of ``redis.timeout`` each to get a free connection, to connect and
        to wait for a reply, so that a failing replica leaves its master the rest (three
        quarters when the read had a connection at once, as it mostly does)."""
        quarter = self.config.timeout / 4
        options = {k: v for k, v in kwargs.items() if k.startswith(_SHARED)}
        options.update(
            host=address[0],
            port=address[1],
            socket_timeout=quarter,
            socket_connect_timeout=min(self.config.connect_timeout, quarter),
            retry=Retry(NoBackoff(), 0),
        )
        if self._readonly:
            options["redis_connect_func"] = _readonly
        if issubclass(connection_class, SentinelManagedSSLConnection):
            connection_class = SSLConnection
        elif issubclass(connection_class, SentinelManagedConnection):
            connection_class = Connection
        pool = BlockingConnectionPool(
            connection_class=connection_class,
            max_connections=self.config.pool_size,
            timeout=quarter,
            **options,
            **POOL_OPTIONS,
        )
        return aioredis.Redis.from_pool(pool)


class Shards(Protocol):
    """What the routing below needs of :class:`~.shards.Shards` (which imports this)."""

    cluster: RedisCluster | None
    clients: list[aioredis.Redis]
    moving: Any

    def shard_of(self, key: str) -> int: ...


def master_of(shards: Shards, key: str) -> str | None:
    """The name the checks give the master of ``key`` (None: read the master)."""
    if shards.cluster is not None:
        try:
            node = shards.cluster.get_node_from_key(key)
        except (rexc.RedisClusterException, rexc.RedisError, AttributeError, KeyError):
            return None  # no slot map yet
        return None if node is None else node.name
    return None if shards.moving is not None else str(shards.shard_of(key))


def masters_of(shards: Shards) -> dict[str, MasterLink]:
    """Every master now, for the checks: a shard's client (a Sentinel group's follows its
    master), or a cluster master's address."""
    if shards.cluster is not None:
        options = shards.cluster.get_connection_kwargs()
        return {
            n.name: ((n.host, n.port), options["connection_class"], options)
            for n in shards.cluster.get_primaries()
        }
    return {
        str(i): (c, c.connection_pool.connection_class, c.connection_pool.connection_kwargs)
        for i, c in enumerate(shards.clients)
    }
