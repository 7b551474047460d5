"""Reads served by replicas (``redis.replica_reads``) on a real Redis Cluster with one
replica per master: READONLY connections to the replicas, a dead replica, a slot that
moves. Which server answered is counted by the servers (``INFO commandstats``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from agentd.fastpath import key_slot
from agentd.store.keys import state_key

from .procs import RedisClusterProcs, RedisServer
from .test_replica_reads import (
    ALL_KINDS,
    WIDE_LAG,
    _calls,
    _calls_on,
    _caught_up,
    _open,
    _replica_ready,
)
from .waiting import wait_until


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisClusterProcs]:
    procs = RedisClusterProcs(tmp_path, masters=3, replicas=1)
    try:
        yield procs
    finally:
        procs.close()


def _replica_hget(port: int, key: str) -> Any:
    """HGET ver of ``key`` on a cluster replica (READONLY, on one connection)."""
    with redis.Redis(port=port, single_connection_client=True) as client:
        client.execute_command("READONLY")
        return client.hget(key, "ver")


def _roles(cluster: RedisClusterProcs) -> tuple[list[int], list[int]]:
    masters, replicas = [], []
    for node in cluster.live():
        with redis.Redis(port=node.port) as client:
            role = client.info("replication")["role"]
        (masters if role == "master" else replicas).append(node.port)
    return masters, replicas


async def test_cluster_hot_reads_are_served_by_readonly_replicas(
    cluster: RedisClusterProcs,
) -> None:
    masters, replicas = _roles(cluster)
    store = await _open(
        [f"redis://127.0.0.1:{cluster.nodes[0].port}"],
        cluster=True,
        replica_reads=ALL_KINDS,
        replica_max_lag=WIDE_LAG,
    )
    try:
        names = [f"doc{i}" for i in range(12)]  # spread over the three masters
        for name in names:
            await store.state_put("shared", name, {"name": name})
        sid = (await store.create_session()).id
        await store.append(sid, [{"role": "user", "content": "hi"}])
        await wait_until(lambda: all(_caught_up(m) for m in masters), what="replicas in sync")
        shards = store.shards  # type: ignore[attr-defined]
        for name in names:
            key = state_key(f"shared/{name}")
            owner = cluster.master_of_slot(key_slot(key)).port
            await _replica_ready(store, f"127.0.0.1:{owner}")
        assert shards.replicas.fell_back == 0
        before = {p: _calls(p, "hmget") for p in masters + replicas}
        evalsha = _calls_on(replicas, "evalsha")
        for name in names:
            assert (await store.state_get("shared", name)).value == {"name": name}
            assert len(await store.history(sid)) == 1
        served = {p: _calls(p, "hmget") - before[p] for p in masters + replicas}
        assert sum(served[p] for p in replicas) == len(names)
        assert sum(served[p] for p in masters) == 0
        assert sum(1 for p in replicas if served[p]) >= 2  # several replicas served
        assert _calls_on(replicas, "evalsha") == evalsha  # history stayed on the masters
        assert shards.replicas.fell_back == 0
    finally:
        await store.close()


async def test_cluster_a_dead_replica_falls_back_with_no_failed_read(
    cluster: RedisClusterProcs,
) -> None:
    store = await _open(
        [f"redis://127.0.0.1:{cluster.nodes[0].port}"],
        cluster=True,
        replica_reads=["state"],
        replica_max_lag=60.0,  # no check between the kill and the reads
    )
    try:
        key = state_key("shared/doc")
        owner = cluster.master_of_slot(key_slot(key)).port
        await store.state_put("shared", "doc", {"n": 1})
        await _replica_ready(store, f"127.0.0.1:{owner}")
        with redis.Redis(port=owner) as client:
            port = int(client.info("replication")["slave0"]["port"])
        await wait_until(lambda: _replica_hget(port, key) == b"1")
        served = _calls(port, "hmget")
        assert (await store.state_get("shared", "doc")).value == {"n": 1}
        assert _calls(port, "hmget") == served + 1
        victim: RedisServer = cluster.node_on(port)
        victim.proc.kill()
        victim.proc.wait()
        before = _calls(owner, "hmget")
        for _ in range(5):
            assert (await store.state_get("shared", "doc")).value == {"n": 1}
        assert store.shards.replicas.fell_back >= 1  # type: ignore[attr-defined]
        assert _calls(owner, "hmget") == before + 5
    finally:
        await store.close()


async def test_cluster_reads_stay_right_when_their_slot_moves_to_another_master(
    cluster: RedisClusterProcs,
) -> None:
    store = await _open(
        [f"redis://127.0.0.1:{cluster.nodes[0].port}"], cluster=True, replica_reads=["state"]
    )
    try:
        key = state_key("shared/doc")
        slot = key_slot(key)
        owner = cluster.master_of_slot(slot)
        await store.state_put("shared", "doc", {"n": 1})
        await _replica_ready(store, f"127.0.0.1:{owner.port}")
        assert (await store.state_get("shared", "doc")).value == {"n": 1}
        masters, _ = _roles(cluster)
        target = cluster.node_on(next(p for p in masters if p != owner.port))
        assert cluster.move_slot(slot, target) == 1
        # The old master's replica answers MOVED, or no such key (the key left with the
        # slot): either way the read is answered right, by the slot's new owner.
        for _ in range(10):
            assert (await store.state_get("shared", "doc")).value == {"n": 1}
        with redis.Redis(port=target.port) as client:
            port = int(client.info("replication")["slave0"]["port"])
        await wait_until(lambda: _replica_hget(port, key) == b"1", what="the new replica")

        async def on_the_new_replica() -> bool:
            before = _calls(port, "hmget")
            assert (await store.state_get("shared", "doc")).value == {"n": 1}
            return _calls(port, "hmget") == before + 1

        await wait_until(on_the_new_replica, what="a read served by the new owner's replica")
    finally:
        await store.close()
