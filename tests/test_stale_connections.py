"""Connections a Redis server closed while they were idle (its ``timeout``, ``CLIENT KILL``,
a restart) cost no call an error: on plain shards (whose calls other than scripts keep
redis-py's command path), a Sentinel group and a Redis Cluster (docs/operations.md,
"Connections the server closed"). A watch and a blocked job read whose connection is
killed go on. A server that really died still fails its calls with the stable 503, until
it is back.

Real servers: three plain shards, one Sentinel group (a master, a replica, three
sentinels) and a 3-master cluster; the store's own connections are found in ``CLIENT
LIST`` by their local ports, and the test waits until the server has closed every one of
them before it calls again."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis.asyncio.sentinel import MasterNotFoundError

from agentd.config import from_dict
from agentd.errors import StoreUnavailable
from agentd.store import Store, open_store
from agentd.store import keys as K
from agentd.store.redis.shards import broke

from .procs import RedisClusterProcs, RedisServer
from .replication import ReplicaGroup, Sentinels
from .store_helpers import collect_messages
from .waiting import wait_until, wait_until_sync

# Generous: dozens of connections are opened again at once, on a loaded machine, and
# a slow connect must not pass for the failure these tests look for.
REDIS_TIMEOUT_S = 5.0
# Calls made after the kill: more than the connections each pool had open.
CALLS = 24


@dataclass
class Topology:
    """A store's servers: the masters it talks to, and its config."""

    name: str
    config: dict[str, Any]
    masters: list[RedisServer]
    sentinels: list[int] = field(default_factory=list)  # their ports

    @property
    def ports(self) -> list[int]:
        return [s.port for s in self.masters]


@pytest.fixture(scope="module")
def _sentinel_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    workdir = tmp_path_factory.mktemp("stale-sentinel")
    group = ReplicaGroup(workdir, "stale")
    sentinels = None
    try:
        # Slow to fail over: a master killed below must come back as itself.
        sentinels = Sentinels(workdir, [group], down_after_ms=60_000, failover_timeout_ms=120_000)
        redis = {
            "urls": [sentinels.url(group)],
            "timeout": REDIS_TIMEOUT_S,
            "connect_timeout": REDIS_TIMEOUT_S,
            "down_retry": 0.2,
        }
        yield Topology("sentinel", redis, [group.servers[0]], sentinels.ports)
    finally:
        if sentinels is not None:
            sentinels.close()
        group.close()


@pytest.fixture(params=["sharded", "sentinel", "cluster"])
def topology(request: pytest.FixtureRequest) -> Topology:
    if request.param == "sentinel":
        topo: Topology = request.getfixturevalue("_sentinel_group")
        return topo
    if request.param == "sharded":
        shards: list[RedisServer] = request.getfixturevalue("redis_shards")
        redis = {
            "urls": [s.url for s in shards],
            "timeout": REDIS_TIMEOUT_S,
            "connect_timeout": REDIS_TIMEOUT_S,
            "down_retry": 0.2,
        }
        return Topology("sharded", redis, shards)
    cluster: RedisClusterProcs = request.getfixturevalue("redis_cluster")
    redis = {
        "urls": cluster.urls,
        "cluster": True,
        "timeout": REDIS_TIMEOUT_S,
        "connect_timeout": REDIS_TIMEOUT_S,
        "down_retry": 0.2,
    }
    return Topology("cluster", redis, list(cluster.nodes))


@pytest.fixture
async def store(topology: Topology) -> AsyncIterator[Store]:
    instance = open_store(from_dict({"redis": topology.config}))
    await instance.start()
    yield instance
    await instance.close()


def _local_ports(store: Store) -> set[int]:
    """The local ports of every open connection of the store's pools (not pub/sub)."""
    ports: set[int] = set()
    for shards in (store.shards, store.waits):  # type: ignore[attr-defined]
        conns: list[Any] = []
        if shards.cluster is not None:
            for node in shards.cluster.get_nodes():
                conns += node._connections
        for client in shards.clients:
            pool = client.connection_pool
            conns += [*pool._available_connections, *pool._in_use_connections]
        for conn in conns:
            writer = getattr(conn, "_writer", None)
            if writer is not None:
                ports.add(writer.get_extra_info("sockname")[1])
    return ports


async def _clients_on(servers: list[int]) -> set[int]:
    """The client ports the servers on ``servers`` list in CLIENT LIST (live connections)."""
    ports: set[int] = set()
    for port in servers:
        async with aioredis.Redis(port=port) as probe:
            for client in await probe.client_list():
                ports.add(int(client["addr"].rsplit(":", 1)[1]))
    return ports


async def _kill_idle(servers: list[int], how: str) -> None:
    """Close the servers' connections to their normal clients, as ``how`` says."""
    for port in servers:
        async with aioredis.Redis(port=port) as probe:
            if how == "kill":
                await probe.client_kill_filter(_type="normal", skipme=True)
            else:
                await probe.config_set("timeout", 1)


async def _reset(masters: list[RedisServer]) -> None:
    for server in masters:
        with contextlib.suppress(Exception):
            async with aioredis.Redis(port=server.port) as probe:
                await probe.config_set("timeout", 0)


async def _calls(store: Store, sid: str) -> list[Any]:
    """Calls made at once, of each kind: scripts, redis-py's commands, a blocking read of
    the job queue (each pool then has several connections open)."""
    return await asyncio.gather(
        *(store.get_session(sid) for _ in range(CALLS)),
        *(store.state_get("ns", "doc") for _ in range(CALLS)),
        store.jobs.take("p", 0, "c1", 1, 0.05),
        return_exceptions=True,
    )


@pytest.mark.parametrize("how", ["kill", "timeout"])
async def test_no_call_fails_after_the_server_closed_idle_connections(
    topology: Topology, store: Store, how: str
) -> None:
    sid = (await store.create_session()).id
    await store.state_put("ns", "doc", {"n": 1})
    assert not [r for r in await _calls(store, sid) if isinstance(r, BaseException)]
    opened = _local_ports(store)
    assert len(opened) >= 2, opened
    try:
        await _kill_idle(topology.ports, how)

        async def all_closed() -> bool:
            return not opened & await _clients_on(topology.ports)

        await wait_until(all_closed, 30, "the servers to close the store's connections")
    finally:
        await _reset(topology.masters)
    # At once (every stale connection of a pool taken), then one after another.
    failed = [r for r in await _calls(store, sid) if isinstance(r, BaseException)]
    for _ in range(CALLS):
        try:
            await store.append(sid, [{"role": "user", "content": "after"}])
        except StoreUnavailable as exc:
            failed.append(exc)
    assert failed == []


def _pubsub_ports(store: Store) -> set[int]:
    """The local ports of the store's pub/sub connections (one per server watched)."""
    ports = set()
    for endpoint in store.hub._endpoints.values():  # type: ignore[attr-defined]
        pubsub = endpoint._pubsub
        conn = None if pubsub is None else pubsub.connection
        if conn is not None and conn._writer is not None:
            ports.add(conn._writer.get_extra_info("sockname")[1])
    return ports


async def test_a_watch_goes_on_after_the_server_killed_its_connection(
    topology: Topology, store: Store
) -> None:
    """The watch's connection is not idle (it waits for messages): when the server kills
    it, the watch subscribes again and reads what it missed from history."""
    sid = (await store.create_session()).id
    async with aclosing(await store.open_watch(sid, after=0)) as events:
        first = await store.append(sid, [{"role": "user", "content": "before"}])
        assert await collect_messages(events, sid, first[-1]["seq"]) == first
        watching = _pubsub_ports(store)
        assert watching
        for server in topology.masters:
            async with aioredis.Redis(port=server.port) as probe:
                await probe.client_kill_filter(_type="pubsub", skipme=True)

        async def all_closed() -> bool:
            return not watching & await _clients_on(topology.ports)

        await wait_until(all_closed, 30, "the servers to close the watch's connection")
        second = await store.append(sid, [{"role": "user", "content": "after"}])
        async with asyncio.timeout(30):
            got = await collect_messages(events, sid, second[-1]["seq"])
        assert got[-1] == second[-1]


@pytest.mark.parametrize("kind", ["sentinel", "cluster"])
async def test_a_server_that_died_fails_calls_with_503_until_it_is_back(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The hostile case: the server is gone for real (kill -9), so its calls fail, with
    the stable code; when it is back (same address, empty), calls succeed again, and none
    fails on a connection the dead server left behind."""
    cluster: RedisClusterProcs | None = None
    if kind == "sentinel":
        topo: Topology = request.getfixturevalue("_sentinel_group")
        server, config = topo.masters[0], topo.config
    else:
        # Its own cluster: a node of the shared one is not killed.
        cluster = RedisClusterProcs(tmp_path / "cluster")
        server = cluster.master_of_key(K.state_key("ns/doc"))
        config = {"urls": cluster.urls, "cluster": True, "timeout": REDIS_TIMEOUT_S,
                  "connect_timeout": REDIS_TIMEOUT_S, "down_retry": 0.2}  # fmt: skip
    store = open_store(from_dict({"redis": config}))
    await store.start()
    try:
        await store.state_put("ns", "doc", {"n": 1})
        await asyncio.gather(*(store.state_get("ns", "doc") for _ in range(8)))
        server.proc.kill()
        server.proc.wait()
        for _ in range(3):
            with pytest.raises(StoreUnavailable) as failed:
                await store.state_get("ns", "doc")
            assert (failed.value.status, failed.value.code) == (503, "store_unavailable")
        server.start()

        async def back() -> bool:
            try:
                await store.state_put("ns", "doc", {"n": 2})
            except StoreUnavailable:
                return False
            return True

        await wait_until(back, 60, "the store to answer again")
        results = await asyncio.gather(
            *(store.state_get("ns", "doc") for _ in range(CALLS)), return_exceptions=True
        )
        assert [r for r in results if isinstance(r, BaseException)] == []
    finally:
        await store.close()
        if server.proc.poll() is not None:
            server.start()
        if cluster is not None:
            cluster.close()


async def _blocked_readers(masters: list[RedisServer]) -> set[int]:
    """The ids of the clients blocked in a command (a job read's XREADGROUP BLOCK)."""
    ids: set[int] = set()
    for server in masters:
        async with aioredis.Redis(port=server.port) as probe:
            ids |= {int(c["id"]) for c in await probe.client_list() if "b" in c["flags"]}
    return ids


async def test_a_job_read_whose_connection_is_killed_while_blocked_reads_again(
    topology: Topology,
) -> None:
    """A blocked read's connection is not idle: the server's timeout spares it, but CLIENT
    KILL does not. The read is sent again on another connection (no 503, no pause of the
    job reader), and a job queued then is delivered to it."""
    # A long block: the job below is queued while the second read waits.
    config = {**topology.config, "timeout": 20.0}
    store = open_store(from_dict({"redis": config}))
    await store.start()
    try:
        await store.jobs.take("p", 0, "c1", 1, 0.05)  # the group exists
        take = asyncio.ensure_future(store.jobs.take("p", 0, "c1", 1, 15.0))
        first = await wait_until(lambda: _blocked_readers(topology.masters), 30, "a blocked read")
        for server in topology.masters:
            async with aioredis.Redis(port=server.port) as probe:
                await probe.client_kill_filter(_type="normal", skipme=True)

        async def read_again() -> bool:
            # Or the read ended (it failed: awaiting it below says how).
            return take.done() or bool(await _blocked_readers(topology.masters) - first)

        await wait_until(read_again, 30, "the read to be sent again")
        assert await store.jobs.enqueue("p", 0, "job-1", 100)
        async with asyncio.timeout(30):
            taken = await take
        assert [d.job_id for d in taken] == ["job-1"]
    finally:
        await store.close()


async def test_a_master_is_found_after_the_sentinels_closed_their_connections(
    _sentinel_group: Topology,
) -> None:
    """A new connection to a group's master asks the sentinels where it is, over idle
    connections of their own: the sentinels closing those (a restart, their ``timeout``)
    must not fail it."""
    topo = _sentinel_group
    store = open_store(from_dict({"redis": topo.config}))
    await store.start()
    try:
        sid = (await store.create_session()).id
        await store.state_put("ns", "doc", {"n": 1})
        await _calls(store, sid)
        group = store.shards.groups[0]  # type: ignore[attr-defined]
        # Each sentinel asked once (a worker asks the next one when one fails): every
        # sentinel holds an idle connection of the worker's.
        for sentinel in group.sentinel.sentinels:
            await sentinel.ping()
        asking: set[int] = set()
        for sentinel in group.sentinel.sentinels:
            for conn in sentinel.connection_pool._available_connections:
                if conn._writer is not None:
                    asking.add(conn._writer.get_extra_info("sockname")[1])
        assert asking
        opened = _local_ports(store)
        # The master's too: the next call then needs a new connection, found by asking.
        servers = [*topo.ports, *topo.sentinels]
        await _kill_idle(servers, "kill")

        async def all_closed() -> bool:
            if (opened | asking) & await _clients_on(servers):
                # One was being opened or used at the kill: kill again until none is left.
                await _kill_idle(servers, "kill")
                return False
            return True

        await wait_until(all_closed, 30, "the servers to close the store's connections")
        failed = [r for r in await _calls(store, sid) if isinstance(r, BaseException)]
        assert failed == []
    finally:
        await store.close()


async def test_reads_from_a_replica_go_on_after_it_closed_idle_connections(
    tmp_path: Path,
) -> None:
    """``redis.replica_reads``: a replica closing the worker's idle connections does not
    make a read fall back to the master (nor the replica be left unread until a check)."""
    group = ReplicaGroup(tmp_path, "replicated")
    store = open_store(
        from_dict(
            {
                "redis": {
                    "urls": [group.servers[0].url],
                    "timeout": REDIS_TIMEOUT_S,
                    "connect_timeout": REDIS_TIMEOUT_S,
                    "replica_reads": ["state"],
                    # Checked every 7.5 s: no check finds the replica stale meanwhile.
                    "replica_max_lag": 30.0,
                }
            }
        )
    )
    await store.start()
    try:
        replicas = store.shards.replicas  # type: ignore[attr-defined]
        await store.state_put("ns", "doc", {"n": 1})
        replica_port = group.servers[1].port

        async def replicated() -> bool:
            async with aioredis.Redis(port=replica_port) as probe:
                return bool(await probe.exists(K.state_key("ns/doc")))

        await wait_until(replicated, 30, "the document on the replica")
        await wait_until(lambda: replicas.pick("0") is not None, 30, "a fresh replica")
        reads = await asyncio.gather(*(store.state_get("ns", "doc") for _ in range(CALLS)))
        assert [r.value for r in reads] == [{"n": 1}] * CALLS
        assert (replicas.served, replicas.fell_back) == (CALLS, 0)
        replica = replicas.pick("0")
        opened = {
            c._writer.get_extra_info("sockname")[1]
            for c in replica.client.connection_pool._available_connections
            if c._writer is not None
        }
        assert opened
        await _kill_idle([replica_port], "kill")

        async def all_closed() -> bool:
            return not opened & await _clients_on([replica_port])

        await wait_until(all_closed, 30, "the replica to close the store's connections")
        reads = await asyncio.gather(*(store.state_get("ns", "doc") for _ in range(CALLS)))
        assert [r.value for r in reads] == [{"n": 1}] * CALLS
        assert (replicas.served, replicas.fell_back) == (2 * CALLS, 0)
    finally:
        await store.close()
        group.close()


def _kill_unseen(servers: list[int], opened: set[int]) -> None:
    """CLIENT KILL from a blocking client, waiting until the servers closed the store's
    connections: the event loop does not run meanwhile, so the store has not seen the
    closes when it calls next (as when a server closes a connection just as a call is
    sent on it)."""
    for port in servers:
        with redis.Redis(port=port) as probe:
            probe.client_kill_filter(_type="normal", skipme=True)

    def all_closed() -> bool:
        listed: set[int] = set()
        for port in servers:
            with redis.Redis(port=port) as probe:
                listed |= {int(c["addr"].rsplit(":", 1)[1]) for c in probe.client_list()}
        return not opened & listed

    wait_until_sync(all_closed, 30, "the servers to close the store's connections")


@pytest.mark.parametrize("read", ["state", "session", "load"])
async def test_a_read_whose_connection_closes_as_it_is_sent_is_sent_again(
    topology: Topology, store: Store, read: str
) -> None:
    """The race no check before use can see: the read (a command, or a script that only
    reads and refreshes expiries) is sent again on another connection."""
    await store.state_put("ns", "doc", {"n": 1})
    sid = (await store.create_session()).id
    await store.append(sid, [{"role": "user", "content": "hi"}])

    async def call() -> Any:
        if read == "state":
            return (await store.state_get("ns", "doc")).value
        if read == "session":
            return (await store.get_session(sid)).id
        info, messages = await store.load(sid, 10)
        return info.id, [m["content"] for m in messages]

    want = await call()
    await asyncio.gather(*(call() for _ in range(4)))
    _kill_unseen(topology.ports, _local_ports(store))
    assert await call() == want


def _refused_connect() -> rexc.ConnectionError:
    try:
        raise ConnectionRefusedError(111, "Connection refused")
    except ConnectionRefusedError:
        try:
            raise rexc.ConnectionError("Error 111 connecting to 127.0.0.1:1.")
        except rexc.ConnectionError as exc:  # as redis-py raises it: in the except block
            return exc


@pytest.mark.parametrize(
    ("exc", "again"),
    [
        (rexc.ConnectionError("Connection closed by server."), True),
        (rexc.ConnectionError("Error while reading from 127.0.0.1:1 : (104, 'reset')"), True),
        (_refused_connect(), False),  # the server is down: the 503 at once
        (rexc.ConnectionError("No connection available."), False),  # a busy pool
        (rexc.MaxConnectionsError("Too many connections"), False),
        (MasterNotFoundError("no sentinel names a master of 'g' that is up"), False),
        (rexc.TimeoutError("Timeout reading from 127.0.0.1:1"), False),  # a frozen server
        (rexc.ResponseError("ERR wrong number of arguments"), False),
    ],
)
def test_only_a_connection_that_broke_under_a_read_sends_it_again(
    exc: BaseException, again: bool
) -> None:
    assert broke(exc) is again
