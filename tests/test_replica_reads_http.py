"""Reads served by replicas through the layers above the store: ``GET /v1/state`` of a real
``agentd serve`` on a Sentinel group, and a worker's API key cache (refreshes on a
replica, anything after a change on the master). Which server answered is counted by the
servers (``INFO commandstats``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
import redis

from agentd.auth.keys import KeyCache
from agentd.config import AuthConfig, from_dict
from agentd.store import open_store
from agentd.store.api import KeyRecord
from agentd.store.keys import key_record

from .procs import AgentdProcess
from .replication import ReplicaGroup, Sentinels
from .waiting import wait_until


def _calls(port: int, command: str) -> int:
    with redis.Redis(port=port) as client:
        stats = client.info("commandstats").get(f"cmdstat_{command}")
    return int(stats["calls"]) if stats else 0


@pytest.fixture
def sentinel_group(tmp_path: Path) -> Iterator[tuple[ReplicaGroup, Sentinels]]:
    group = ReplicaGroup(tmp_path, "hot", replicas=1)
    sentinels = None
    try:
        sentinels = Sentinels(tmp_path, [group])
        yield group, sentinels
    finally:
        if sentinels is not None:
            sentinels.close()
        group.close()


async def test_state_reads_over_http_are_served_by_the_replica_and_messages_by_the_master(
    sentinel_group: tuple[ReplicaGroup, Sentinels],
    agentd_instance: Callable[..., AgentdProcess],
) -> None:
    group, sentinels = sentinel_group
    master, replica = group.servers[0].port, group.servers[1].port
    server = agentd_instance(
        f"""
[server]
workers = 2
[redis]
urls = ["{sentinels.url(group)}"]
replica_reads = ["state"]
# A wide bound (checked every 7.5 s): a check delayed by a busy machine must not make
# the replica stale between the two batches counted below.
replica_max_lag = 30.0
"""
    )
    async with aiohttp.ClientSession(server.url) as http:
        async with http.put("/v1/state/team/plan", json={"step": 1}) as put:
            assert put.status == 201
        async with http.post("/v1/sessions", json={}) as created:
            sid = (await created.json())["id"]
        async with http.post(
            f"/v1/sessions/{sid}/messages", json={"messages": [{"role": "user", "content": "hi"}]}
        ) as appended:
            assert appended.status in (200, 201)

        async def get_batch() -> tuple[int, int]:
            """Ten GETs; how many HMGETs the master and the replica ran meanwhile."""
            before = _calls(master, "hmget"), _calls(replica, "hmget")
            for _ in range(10):
                async with http.get("/v1/state/team/plan") as got:
                    assert got.status == 200
                    assert got.headers["ETag"] == '"1"'
                    assert (await got.json())["value"] == {"step": 1}
            return _calls(master, "hmget") - before[0], _calls(replica, "hmget") - before[1]

        # Once both workers have found their replica fresh, every GET is the replica's.
        async def all_on_replica() -> bool:
            return await get_batch() == (0, 10)

        await wait_until(all_on_replica, what="state reads served by the replica")
        assert await get_batch() == (0, 10)
        evalsha = _calls(replica, "evalsha"), _calls(master, "evalsha")
        async with http.get(f"/v1/sessions/{sid}/messages") as listed:
            assert listed.status == 200
            assert len((await listed.json())["data"]) == 1
        assert _calls(replica, "evalsha") == evalsha[0]  # history: the master's
        assert _calls(master, "evalsha") > evalsha[1]
        async with http.get("/metrics") as metrics:
            text = await metrics.text()
        line = 'agentd_store_replica_reads_total{kind="state",outcome="replica"}'
        (served,) = [row for row in text.splitlines() if row.startswith(line)]
        assert float(served.split()[-1]) >= 20
    # The start-up line says so.
    log = server.log_path.read_text()
    assert "reads of state from replicas within 30 s of their master" in log


async def test_a_key_cache_refreshes_on_the_replica_but_reads_a_changed_key_on_the_master(
    sentinel_group: tuple[ReplicaGroup, Sentinels],
) -> None:
    group, sentinels = sentinel_group
    master, replica = group.servers[0].port, group.servers[1].port
    config = {"urls": [sentinels.url(group)], "replica_reads": ["keys"], "replica_max_lag": 30.0}
    store = open_store(from_dict({"redis": config}))
    await store.start()
    cache = KeyCache(store.keyring, AuthConfig(key_cache_s=0.2))
    try:
        record = KeyRecord(id="k1", tenant="t", secret_hash="h", name="n", scopes=("chat",))
        await store.keyring.create(record)
        await wait_until(lambda: _has(replica, key_record("k1")), what="the record replicated")
        replicas = store.shards.replicas  # type: ignore[attr-defined]
        await wait_until(lambda: replicas.pick("0") is not None, what="a fresh replica")

        def counts() -> tuple[int, int]:
            return _calls(master, "hgetall"), _calls(replica, "hgetall")

        start = counts()
        assert await cache.limits_of("k1") is None  # first look-up of the id: the master
        assert counts() == (start[0] + 1, start[1])
        entry = cache._records["k1"]
        await wait_until(lambda: entry.fresh_until < time.monotonic(), what="the record stale")
        assert await cache.limits_of("k1") is None  # a refresh: the replica
        assert counts() == (start[0] + 1, start[1] + 1)
        cache.forget("k1")  # a change was heard of (revoked, updated): the master
        assert await cache.limits_of("k1") is None
        assert counts() == (start[0] + 2, start[1] + 1)
    finally:
        await cache.close()
        await store.close()


def _has(port: int, key: str) -> bool:
    with redis.Redis(port=port) as client:
        return bool(client.exists(key))
