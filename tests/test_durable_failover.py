"""Durable acknowledgements across a failover: a master killed -9 under mixed load (chat
turns on sessions, a WebSocket watcher per session, background jobs) against a real
``agentd serve``, with ``redis.wait_replicas = 1``, in the sharded mode over Sentinel
groups and in a Redis Cluster of 3 masters and 3 replicas.

With the waits, every turn answered 200 is in the store after the failover, every
watcher heard every stored message once with its connection kept, and every accepted
job finishes. Without them (the cluster only), the acknowledged turns lost are counted
and reported, not asserted: on loopback the replica is rarely behind at the kill.
Each master has one replica, so the one promoted is the one that confirmed the writes;
the dead server is brought back as a replica of the new master, so that writes can be
confirmed again. The figures are printed (``-s``) for docs/state.md."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from agentd.fastpath import SLOT_COUNT, key_slot

from .cluster_load import ClusterLoad
from .durable_load import (
    assert_durable,
    durable_config,
    fail_over,
    linked_replica,
    stored_histories,
)
from .procs import AgentdProcess, RedisServer
from .replication import SentinelShards, two_sentinel_shards
from .test_cluster_failover import lost_acks, session_ids
from .waiting import wait_until_sync
from .waitrepl_procs import ReplicatedCluster

pytestmark = pytest.mark.slow

Start = Callable[..., AgentdProcess]

NODE_TIMEOUT_MS = 1000
SESSIONS = 6
JOB_EVERY_S = 0.2


# -- sharded mode over Sentinel groups --------------------------------------------------


@pytest.fixture
def sentinel_shards(tmp_path: Path) -> Iterator[SentinelShards]:
    with two_sentinel_shards(tmp_path) as shards:
        yield shards


def _sharded_sids(per_shard: int) -> list[str]:
    """Session ids, ``per_shard`` on each of two shards (shard 0 first)."""
    found: dict[int, list[str]] = {0: [], 1: []}
    while min(map(len, found.values())) < per_shard:
        sid = "s" + secrets.token_hex(8)
        shard = key_slot(sid) * 2 // SLOT_COUNT
        if len(found[shard]) < per_shard:
            found[shard].append(sid)
    return found[0] + found[1]


def _rejoin_group(dead: RedisServer, new: RedisServer) -> None:
    """The dead master started again (empty) and made a replica of the promoted one, as
    an operator would (Sentinel would too, after a few seconds)."""
    dead.start()
    with redis.Redis(port=new.port) as client:
        client.config_set("repl-diskless-sync-delay", 0)  # sync it now, not in 5 s
    with redis.Redis(port=dead.port) as client:
        client.execute_command("REPLICAOF", "127.0.0.1", new.port)
    wait_until_sync(lambda: linked_replica(dead, new), 30, "the old master to be a replica")


async def test_sentinel_failover_loses_no_acknowledged_turn(
    sentinel_shards: SentinelShards, agentd_instance: Start
) -> None:
    urls = sentinel_shards.urls
    proc = agentd_instance(durable_config(urls, wait_replicas=1, cluster=False))
    workers = proc.worker_pids()
    group = sentinel_shards.groups[0]
    old = group.master()
    promoted: list[RedisServer] = []

    def promote() -> None:
        promoted.append(sentinel_shards.sentinels.wait_promotion(group, old, 30))

    load = ClusterLoad(proc.url, _sharded_sids(SESSIONS // 2), job_every_s=JOB_EVERY_S)
    try:
        failover = await fail_over(
            load, lambda: group.kill(old), promote, lambda: _rejoin_group(old, promoted[0])
        )
        await assert_durable(proc, workers, load, failover, "sentinel durable failover")
        # The other shard's sessions were never refused.
        other = set(load.sids[SESSIONS // 2 :])
        assert not [r for r in load.failures() if r.sid in other], load.failures()
    finally:
        await load.close()


# -- Redis Cluster, 3 masters and 3 replicas --------------------------------------------


@pytest.fixture
def replicated(tmp_path: Path) -> Iterator[ReplicatedCluster]:
    """3 masters, 3 replicas, a short cluster-node-timeout, the other masters' slots
    served while one has none."""
    cluster = ReplicatedCluster(
        tmp_path / "cluster", node_timeout=NODE_TIMEOUT_MS,
        extra=("--cluster-require-full-coverage", "no"),
    )  # fmt: skip
    yield cluster
    cluster.close()


@pytest.mark.parametrize("wait_replicas", [1, 0], ids=["wait_replicas-1", "wait_replicas-0"])
async def test_cluster_failover_with_and_without_wait_replicas(
    replicated: ReplicatedCluster, agentd_instance: Start, wait_replicas: int
) -> None:
    proc = agentd_instance(durable_config(replicated.urls, wait_replicas, cluster=True))
    workers = proc.worker_pids()
    sids = session_ids(SESSIONS)
    victim = replicated.master_of_key(sids[0])
    promoted: list[RedisServer] = []

    def promote() -> None:
        promoted.append(replicated.wait_promoted(victim))

    def rejoin() -> None:
        # Back with its nodes.conf: it finds its slots taken and becomes a replica.
        victim.start()
        wait_until_sync(lambda: linked_replica(victim, promoted[0]), 30,
                        "the old master to be a replica of the new one")  # fmt: skip

    load = ClusterLoad(proc.url, sids, job_every_s=JOB_EVERY_S)
    try:
        failover = await fail_over(load, lambda: replicated.kill(victim), promote, rejoin)
        what = f"cluster failover wait_replicas={wait_replicas}"
        if wait_replicas:
            await assert_durable(proc, workers, load, failover, what)
            return
        # Without waits: the loss window, measured (the watchers may have heard a turn
        # the new master never got, whose seq a later turn then took).
        stored = await stored_histories(load)
        figures = failover.figures(load, lost_acks(load, stored))
        ends = await load.job_ends(limit=60.0)
        figures["jobs_not_completed"] = sum(1 for s in ends.values() if s != "completed")
        print(f"\n{what} figures:", json.dumps(figures))
        assert proc.worker_pids() == workers, "a worker restarted"
        for failed in load.failures():
            assert (failed.status, failed.code) == (503, "store_unavailable"), failed
    finally:
        await load.close()
