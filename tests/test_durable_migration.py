"""Durable acknowledgements while a live session's slot migrates: the ``ASK`` path.

The slot of three sessions taking turns is moved by hand, the way ``redis-cli --cluster
reshard`` does it (``SETSLOT IMPORTING`` / ``MIGRATING``, ``MIGRATE`` in batches,
``SETSLOT NODE``), with ``redis.wait_replicas = 1``, a WebSocket watcher per session and
background jobs, against a real ``agentd serve``. Once every key is on the target the
migration is held while state documents of the same slot are written: the source
answers each write ``ASK``, and it is acknowledged only if the write and its ``WAIT``
were sent again, after ``ASKING``, to the target, whose replica then has it. (A turn
cannot run on the importing node before the slot is its own: its scripts name keys that
do not exist yet, the turn's lease and the pub/sub channel, and Redis refuses such a
command with ``TRYAGAIN`` until the move ends; agentd retries it within
``redis.timeout``.) No request may fail; no acknowledged turn or write may be missing."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
import redis

from agentd.config import from_dict
from agentd.fastpath import key_slot
from agentd.store import open_store
from agentd.store.keys import state_key

from .cluster_load import ClusterLoad
from .durable_load import durable_config, stored_histories
from .procs import AgentdProcess, RedisClusterProcs, RedisServer
from .test_cluster_failover import check_watchers, create_sessions, lost_acks
from .waiting import wait_until
from .waitrepl_procs import ReplicatedCluster

pytestmark = pytest.mark.slow

Start = Callable[..., AgentdProcess]

SESSIONS = 3
# Keys added to the sessions' slot, so that its keys go over in many batches and turns
# meet the slot half moved (TRYAGAIN for a script whose keys are split, ASK otherwise).
BALLAST = 500
BATCH = 10
# Acknowledged state writes while the migration is held (each one ASKed).
HELD_WRITES = 12
GENEROUS_TIMEOUTS = {"connect_timeout": 30.0, "timeout": 30.0}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ReplicatedCluster]:
    replicated = ReplicatedCluster(tmp_path / "cluster")
    yield replicated
    replicated.close()


def _sids_in_one_slot(count: int) -> list[str]:
    first = "s" + secrets.token_hex(8)
    found = [first]
    while len(found) < count:
        sid = "s" + secrets.token_hex(8)
        if key_slot(sid) == key_slot(first):
            found.append(sid)
    return found


def _stat(node: RedisServer, section: str, name: str, field: str) -> int:
    with redis.Redis(port=node.port) as client:
        return int(client.info(section).get(name, {}).get(field, 0))


def _asks(node: RedisServer) -> int:
    """The ASK redirections ``node`` answered."""
    return _stat(node, "errorstats", "errorstat_ASK", "count")


def _askings(node: RedisServer) -> int:
    """The ASKING commands ``node`` received."""
    return _stat(node, "commandstats", "cmdstat_asking", "calls")


def _waits(node: RedisServer) -> int:
    """The WAIT commands ``node`` ran."""
    return _stat(node, "commandstats", "cmdstat_wait", "calls")


def _moved(node: RedisServer) -> int:
    """The MOVED redirections ``node`` answered."""
    return _stat(node, "errorstats", "errorstat_MOVED", "count")


def _docs_in_slot(slot: int, count: int) -> list[str]:
    """State document keys (namespace ``app``) whose key hashes to ``slot``."""
    found: list[str] = []
    while len(found) < count:
        key = "d" + secrets.token_hex(6)
        if key_slot(f"app/{key}") == slot:
            found.append(key)
    return found


class Migration:
    """One slot moved from its master to ``target``, step by step."""

    def __init__(self, cluster: RedisClusterProcs, slot: int, target: RedisServer) -> None:
        self.cluster, self.slot, self.target = cluster, slot, target
        self.source = cluster.master_of_slot(slot)
        self.moved = 0

    def begin(self) -> None:
        src, dst = self.cluster.node_id(self.source), self.cluster.node_id(self.target)
        with redis.Redis(port=self.target.port) as client:
            client.execute_command("CLUSTER SETSLOT", self.slot, "IMPORTING", src)
        with redis.Redis(port=self.source.port) as client:
            client.execute_command("CLUSTER SETSLOT", self.slot, "MIGRATING", dst)

    def move_keys(self) -> None:
        """Every key of the slot over to the target, ``BATCH`` at a time."""
        with redis.Redis(port=self.source.port) as client:
            while keys := client.execute_command("CLUSTER GETKEYSINSLOT", self.slot, BATCH):
                client.execute_command(
                    "MIGRATE", "127.0.0.1", self.target.port, "", 0, 5000, "REPLACE", "KEYS",
                    *keys,
                )  # fmt: skip
                self.moved += len(keys)

    def finish(self) -> None:
        """The target owns the slot, as every master is told (the target first)."""
        masters = [n for n in self.cluster.live() if not _is_replica(n)]
        owner = self.cluster.node_id(self.target)
        for node in sorted(masters, key=lambda n: n is not self.target):
            with redis.Redis(port=node.port) as client:
                client.execute_command("CLUSTER SETSLOT", self.slot, "NODE", owner)


def _version_on(node: RedisServer, doc: str, asking: bool = False) -> int:
    """The version of state document ``app/doc`` as ``node`` holds it (0: absent);
    ``asking``: of a slot it imports (the read follows ASKING on its connection)."""
    with redis.Redis(port=node.port) as client:
        if _is_replica(node):
            client.execute_command("READONLY")
        pipe = client.pipeline(transaction=False)
        if asking:
            pipe.execute_command("ASKING")
        pipe.hget(state_key(f"app/{doc}"), "ver")
        return int(pipe.execute()[-1] or 0)


async def _put(load: ClusterLoad, doc: str, value: object) -> int:
    """An acknowledged state write: its version (the request must succeed)."""
    async with load._http.put(f"{load.url}/v1/state/app/{doc}", json=value) as reply:
        body = orjson.loads(await reply.read())
        assert reply.status in (200, 201), body
        return int(body["version"])


async def test_acknowledged_writes_follow_ask_to_the_importing_node_and_none_is_lost(
    cluster: ReplicatedCluster, agentd_instance: Start
) -> None:
    proc = agentd_instance(durable_config(cluster.urls, wait_replicas=1, cluster=True))
    sids = _sids_in_one_slot(SESSIONS)
    slot = key_slot(sids[0])
    docs = _docs_in_slot(slot, 3)
    source = cluster.master_of_slot(slot)
    masters, _ = cluster.roles()
    target = next(m for m in masters if m is not source)
    replica = next(n for n in cluster.nodes if _replicates(n, target))
    migration = Migration(cluster, slot, target)
    load = ClusterLoad(proc.url, sids, job_every_s=0.2)
    try:
        await create_sessions(load, sids)
        for doc in docs:
            assert await _put(load, doc, {"doc": doc, "n": 0}) == 1
        with redis.Redis(port=source.port) as client:
            client.mset({f"ballast:{{{sids[0]}}}:{n}": "x" * 100 for n in range(BALLAST)})
        await load.start()
        await wait_until(lambda: all(load.ok_since(s, 0) >= 3 for s in sids), 30, "warm-up")

        started = time.monotonic()
        await asyncio.to_thread(migration.begin)
        await asyncio.to_thread(migration.move_keys)
        # Held with every key on the target: each write of the slot is asked over there.
        asks, askings, moved = _asks(source), _askings(target), _moved(target)
        waits = _waits(target)
        versions = {doc: 1 for doc in docs}
        for n in range(HELD_WRITES):
            doc = docs[n % len(docs)]
            versions[doc] = await _put(load, doc, {"doc": doc, "n": n + 1})
            assert _version_on(target, doc, asking=True) == versions[doc]
        asked, asking = _asks(source) - asks, _askings(target) - askings
        waits = _waits(target) - waits
        moved_back = _moved(target) - moved
        await asyncio.to_thread(migration.finish)
        moved_at = time.monotonic()
        await wait_until(lambda: all(load.ok_since(s, moved_at) >= 3 for s in sids), 30,
                         "turns after the move")  # fmt: skip
        await load.stop()

        stored = await stored_histories(load)
        figures = load.figures() | {
            "keys_moved": migration.moved,
            "migration_s": round(moved_at - started, 2),
            "state_writes_while_held": HELD_WRITES,
            "asks_while_held": asked,
            "askings_while_held": asking,
            # (redis-py tries a command the target refused with TRYAGAIN again there,
            # without ASKING: a turn's, until the move ends.)
            "moved_by_target_while_held": moved_back,
            "waits_on_target_while_held": waits,
            "acked": sum(map(len, load.acked.values())),
            "acked_lost": lost_acks(load, stored),
        }
        print("\ndurable migration figures:", json.dumps(figures))
        assert not load.failures(), figures
        assert figures["acked_lost"] == 0, figures
        # Each write was refused by the source with ASK and sent, after ASKING, to the
        # target, which took it, with its WAIT.
        assert asked >= HELD_WRITES and asking >= HELD_WRITES, figures
        assert waits >= HELD_WRITES, figures
        assert cluster.master_of_slot(slot) is target
        for doc, version in versions.items():
            assert _version_on(target, doc) == version

        def replica_holds_all() -> bool:
            try:
                return all(_version_on(replica, d) == v for d, v in versions.items())
            except redis.exceptions.MovedError:
                return False  # the replica has not heard of the slot's new owner yet

        await wait_until(replica_holds_all, 30, "the target's replica to hold every version")
        await check_watchers(load)
        ends = await load.job_ends(limit=60.0)
        assert set(ends.values()) == {"completed"}, ends
    finally:
        await load.close()


def _is_replica(node: RedisServer) -> bool:
    with redis.Redis(port=node.port) as client:
        return client.info("replication").get("role") == "slave"


def _replicates(node: RedisServer, master: RedisServer) -> bool:
    with redis.Redis(port=node.port) as client:
        info = client.info("replication")
    return info.get("role") == "slave" and int(info.get("master_port", 0)) == master.port


async def test_a_command_asked_to_the_importing_node_goes_on_the_asking_connection(
    tmp_path: Path,
) -> None:
    """redis-py sends ASKING, then the command it allows, each on a pooled connection of
    the node: the same one only because agentd makes a node hand out the connection put
    back last (:mod:`agentd.store.redis.asking`). Were it another, the importing node
    would answer the command MOVED (and redis-py go round until it gives up)."""
    cluster = RedisClusterProcs(tmp_path / "cluster", 3)
    # What is tested is which connection a command goes on, not how fast the nodes
    # answer: a reply slower than the default 2 s (a loaded machine) is no failure here.
    options = {"urls": cluster.urls, "cluster": True, **GENEROUS_TIMEOUTS}
    store = open_store(from_dict({"redis": options}))
    await store.start()
    try:
        doc = _docs_in_slot(key_slot("app/first"), 1)[0]
        await store.state_put("app", doc, 0)
        slot = key_slot(f"app/{doc}")
        target = next(n for n in cluster.nodes if n is not cluster.master_of_slot(slot))
        # Several connections to the target, free in its pool.
        await asyncio.gather(*(store.state_put("app", f"other{i}", 0) for i in range(40)))
        migration = Migration(cluster, slot, target)
        migration.begin()
        migration.move_keys()
        moved, askings = _moved(target), _askings(target)
        for n in range(5):
            await asyncio.gather(*(store.state_put("app", doc, n * 8 + i) for i in range(8)))
        assert _askings(target) - askings >= 40
        assert _moved(target) == moved
        assert (await store.state_get("app", doc)).version == 41
    finally:
        await store.close()
        cluster.close()
