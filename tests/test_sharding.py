"""Where data lands, and what happens when a shard goes away, on real redis-servers."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis

from agentd.config import from_dict
from agentd.errors import StoreUnavailable
from agentd.fastpath import key_slot
from agentd.store import Store, open_store
from agentd.store.keys import session_keys, state_key
from agentd.store.redis.shards import Shards
from agentd.store.scripts import APPEND, HISTORY

from .procs import RedisClusterProcs, RedisServer
from .waiting import wait_until


async def _open(urls: list[str], cluster: bool = False, **redis_opts: object) -> Store:
    store = open_store(from_dict({"redis": {"urls": urls, "cluster": cluster, **redis_opts}}))
    await store.start()
    return store


def test_a_shards_password_never_reaches_its_outage_name() -> None:
    """Outage names are in the 503 messages clients read."""
    urls = ["redis://:s3cret@127.0.0.1:7000/0", "redis://127.0.0.1:7001"]
    shards = Shards(from_dict({"redis": {"urls": urls}}).redis)
    assert shards.describe(0) == "shard 0 (redis://:***@127.0.0.1:7000/0)"
    assert shards.describe(1) == "shard 1 (redis://127.0.0.1:7001)"


def test_slots_split_into_contiguous_stable_ranges() -> None:
    urls = [f"redis://127.0.0.1:{7000 + i}" for i in range(3)]
    shards = Shards(from_dict({"redis": {"urls": urls}}).redis)
    owners = [slot * 3 // 16384 for slot in range(16384)]
    assert owners[0] == 0 and owners[-1] == 2
    assert owners == sorted(owners)  # contiguous ranges, in URL order
    assert [owners.count(i) for i in range(3)] == [5462, 5461, 5461]
    # The documented boundaries: shard i starts at ceil(i * 16384 / N).
    assert owners.index(1) == 5462 and owners.index(2) == 10923
    for key in ("a", "{s_1}:meta", state_key("ns/k")):
        assert shards.shard_of(key) == key_slot(key) * 3 // 16384


@pytest.fixture
async def sharded_store(redis_shards: list[RedisServer]) -> AsyncIterator[Store]:
    store = await _open([s.url for s in redis_shards])
    yield store
    await store.close()


async def test_sessions_spread_over_every_shard_and_keep_their_keys_together(
    sharded_store: Store, redis_shards: list[RedisServer]
) -> None:
    sids = [(await sharded_store.create_session()).id for _ in range(60)]
    for sid in sids:
        await sharded_store.append(sid, [{"role": "user", "content": sid}])
    clients = [redis.Redis(port=s.port) for s in redis_shards]
    try:
        holders = {}
        for sid in sids:
            meta, log = session_keys(sid)
            where = [i for i, c in enumerate(clients) if c.exists(meta)]
            assert len(where) == 1
            assert clients[where[0]].exists(log) == 1  # the same shard holds the history
            assert where[0] == key_slot(meta) * 3 // 16384
            holders[sid] = where[0]
        assert set(holders.values()) == {0, 1, 2}
    finally:
        for c in clients:
            c.close()


async def test_every_key_lands_on_the_cluster_slot_redis_computes(
    redis_cluster: RedisClusterProcs,
) -> None:
    store = await _open(redis_cluster.urls, cluster=True)
    try:
        sids = [(await store.create_session()).id for _ in range(30)]
        for sid in sids:
            await store.append(sid, [{"role": "user", "content": "x"}])
        for i in range(30):
            await store.state_put("ns", f"k{i}", {"i": i})
    finally:
        await store.close()
    keys = [k for sid in sids for k in session_keys(sid)] + [
        state_key(f"ns/k{i}") for i in range(30)
    ]
    node = redis.Redis(port=redis_cluster.nodes[0].port)
    try:
        for key in keys:
            assert node.execute_command("CLUSTER", "KEYSLOT", key) == key_slot(key)
    finally:
        node.close()
    # Each key exists on exactly one node; the others answer MOVED for its slot.
    for key in keys:
        holders = 0
        for n in redis_cluster.nodes:
            with (
                redis.Redis(port=n.port) as client,
                contextlib.suppress(redis.exceptions.MovedError),
            ):
                holders += client.exists(key)
        assert holders == 1, key


async def test_a_dead_shard_fails_only_its_sessions_and_they_return_with_it(
    tmp_path: Path,
) -> None:
    # Persistence on, so that the restarted shard comes back with its data.
    servers = [RedisServer(tmp_path, "--appendonly", "yes") for _ in range(3)]
    store = await _open([s.url for s in servers], down_retry=0.2)
    try:
        by_shard: dict[int, str] = {}
        while len(by_shard) < 3:
            info = await store.create_session()
            shard = store.shards.shard_of(session_keys(info.id)[0])  # type: ignore[attr-defined]
            if shard not in by_shard:
                await store.append(info.id, [{"role": "user", "content": f"on {shard}"}])
                by_shard[shard] = info.id

        servers[1].stop()
        with pytest.raises(StoreUnavailable) as failure:
            await store.history(by_shard[1])
        assert failure.value.status == 503 and failure.value.code == "store_unavailable"
        # Fails fast: on the refused connection itself, not after waiting for a timeout.
        assert isinstance(failure.value.__cause__, redis.ConnectionError), failure.value.__cause__
        for shard in (0, 2):
            assert (await store.history(by_shard[shard]))[0]["content"] == f"on {shard}"
            await store.append(by_shard[shard], [{"role": "assistant", "content": "still here"}])
        reason = await store.readiness()
        assert reason is not None and "shard 1" in reason and "shard 0" not in reason

        servers[1].start()

        async def reconnected() -> bool:
            try:
                await store.history(by_shard[1])
            except StoreUnavailable:
                return False
            return True

        # The same store reconnects by itself, and the shard's data is back.
        await wait_until(reconnected, what="the shard to come back", poll_s=0.1)
        assert (await store.history(by_shard[1]))[0]["content"] == "on 1"
        assert await store.readiness() is None
    finally:
        await store.close()
        for s in servers:
            s.close()


async def test_scripts_survive_a_server_that_forgot_them(redis_standalone: RedisServer) -> None:
    store = await _open([redis_standalone.url])
    try:
        sid = (await store.create_session()).id
        await store.append(sid, [{"role": "user", "content": "before"}])
        with redis.Redis(port=redis_standalone.port) as client:
            client.script_flush()  # what a restart or failover does to the script cache
            assert client.script_exists(*(s.sha for s in (APPEND, HISTORY))) == [False, False]
        await store.append(sid, [{"role": "user", "content": "after"}])
        assert [m["content"] for m in await store.history(sid)] == ["before", "after"]
        with redis.Redis(port=redis_standalone.port) as client:
            assert client.script_exists(APPEND.sha, HISTORY.sha) == [True, True]
    finally:
        await store.close()
