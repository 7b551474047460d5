"""The quick path of script calls on a plain shard (agentd/store/redis/quick.py): taken for
every script call there, and with redis-py's guarantees kept: the pool's limit (a burst
waits for a connection; a pool in use past ``redis.timeout`` answers busy), a hung
server failing the call within ``redis.timeout`` (its connection never reused with a
reply still unread), a closed idle connection not used, the script sent again after the
server lost it, and a lease granted to a cancelled caller let go."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from agentd.config import from_dict
from agentd.errors import Overloaded, StoreUnavailable
from agentd.store import Store, open_store
from agentd.store import scripts as L
from agentd.store.redis.quick import QuickCalls
from agentd.store.redis.shards import Shards

from .procs import RedisServer
from .store_helpers import fails
from .waiting import wait_until

# A lease far longer than any wait below: a lease left to run out fails the test.
LONG_LEASE_S = 600.0


async def _open(url: str, **redis: Any) -> Store:
    store = open_store(from_dict({"redis": {"urls": [url], **redis}}))
    await store.start()
    return store


def _quick(store: Store) -> QuickCalls:
    quick = store.shards.quick[0]  # type: ignore[attr-defined]
    assert quick is not None, "a plain shard's script calls must take the quick path"
    return quick


@pytest.fixture
async def store(redis_standalone: RedisServer) -> AsyncIterator[Store]:
    instance = await _open(redis_standalone.url)
    yield instance
    await instance.close()


async def test_turns_on_a_plain_shard_take_the_quick_path(store: Store) -> None:
    quick = _quick(store)
    sid = (await store.create_session()).id
    lease = await store.begin_turn(sid, 4, LONG_LEASE_S)  # the scripts loaded, once
    assert lease is not None
    await store.end_turn(sid, lease.token, [])
    before = quick.quick
    for i in range(5):
        lease = await store.begin_turn(sid, 4, LONG_LEASE_S)
        assert lease is not None
        said = [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]
        await store.end_turn(sid, lease.token, said)
    assert quick.quick - before == 10  # both calls of every turn, on an idle connection
    lease = await store.begin_turn(sid, 4, LONG_LEASE_S)
    assert lease is not None
    assert [m["content"] for m in lease.history] == ["q3", "a3", "q4", "a4"]
    assert [m["seq"] for m in lease.history] == [7, 8, 9, 10]


async def test_clusters_and_sentinel_groups_keep_redis_py_s_path(
    redis_cluster: Any,
) -> None:
    shards = Shards(from_dict({"redis": {"urls": redis_cluster.urls, "cluster": True}}).redis)
    assert shards.quick == []  # every call goes through the cluster client
    url = "redis+sentinel://127.0.0.1:1/mymaster"  # never connected to here
    grouped = Shards(from_dict({"redis": {"urls": [url]}}).redis)
    assert grouped.quick == [None]


async def test_a_burst_waits_for_the_pool_and_never_opens_more_connections(
    redis_standalone: RedisServer,
) -> None:
    store = await _open(redis_standalone.url, pool_size=2)
    try:
        sids = [(await store.create_session(metadata={"n": i})).id for i in range(20)]
        got = await asyncio.gather(*(store.get_session(sid) for sid in sids))
        assert [info.metadata["n"] for info in got] == list(range(20))
        pool = store.shards.clients[0].connection_pool  # type: ignore[attr-defined]
        assert not pool._in_use_connections
        assert 1 <= len(pool._available_connections) <= 2
    finally:
        await store.close()


async def test_a_hung_server_fails_the_call_and_its_connection_is_not_reused(
    tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path)
    store = await _open(server.url, timeout=0.5, down_retry=0.1)
    try:
        one = (await store.create_session(metadata={"name": "one"})).id
        two = (await store.create_session(metadata={"name": "two"})).id
        server.proc.send_signal(signal.SIGSTOP)
        try:
            await fails(store.get_session(one), StoreUnavailable, "store_unavailable")
        finally:
            server.proc.send_signal(signal.SIGCONT)
        # The reply to the call that timed out comes now: it must not answer another call.
        got = await wait_until(lambda: _session_or_none(store, two), what="the server back")
        assert got.metadata == {"name": "two"}
        assert (await store.get_session(one)).metadata == {"name": "one"}
    finally:
        await store.close()
        server.close()


async def _session_or_none(store: Store, sid: str) -> Any:
    try:
        return await store.get_session(sid)
    except StoreUnavailable:
        return None


async def test_an_idle_connection_the_server_closed_is_not_used(
    redis_standalone: RedisServer, store: Store
) -> None:
    sid = (await store.create_session()).id
    pool = store.shards.clients[0].connection_pool  # type: ignore[attr-defined]
    async with aioredis.from_url(redis_standalone.url) as probe:
        await probe.client_kill_filter(_type="normal", skipme=True)

    def closed() -> bool:
        return all(c._reader is None or c._reader.at_eof() for c in pool._available_connections)

    await wait_until(closed, what="the store to see its connections closed")
    # At once, not after a 503: a closed connection is left to redis-py, which reconnects.
    assert (await store.get_session(sid)).id == sid


async def test_a_script_the_server_lost_is_sent_again(
    redis_standalone: RedisServer, store: Store
) -> None:
    sid = (await store.create_session()).id
    async with aioredis.from_url(redis_standalone.url) as probe:
        await probe.script_flush()  # what a restart or a failover does
        lease = await store.begin_turn(sid, 0, LONG_LEASE_S)
        assert lease is not None
        assert await probe.script_exists(L.BEGIN_TURN.sha) == [True]


async def test_a_lease_granted_to_a_cancelled_caller_is_let_go(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    # A timeout longer than the pause below: the reply is read once the server is back.
    store = await _open(server.url, timeout=60)
    try:
        quick = _quick(store)
        sid = (await store.create_session()).id
        server.proc.send_signal(signal.SIGSTOP)
        try:
            sent = quick.quick
            turn = asyncio.ensure_future(store.begin_turn(sid, 0, LONG_LEASE_S))
            await wait_until(lambda: quick.quick > sent, what="the turn's call to be sent")
            turn.cancel()
            with pytest.raises(asyncio.CancelledError):
                await turn
        finally:
            server.proc.send_signal(signal.SIGCONT)
        # Let go once its reply came: the next turn gets the session, long before the
        # lease would run out.
        lease = await wait_until(
            lambda: store.begin_turn(sid, 0, LONG_LEASE_S), what="the orphaned lease let go"
        )
        await store.end_turn(sid, lease.token, [])
    finally:
        await store.close()
        server.close()


async def test_a_pool_in_use_past_the_timeout_answers_busy(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    store = await _open(server.url, pool_size=1, timeout=0.3)
    try:
        sid = (await store.create_session()).id
        pool = store.shards.clients[0].connection_pool  # type: ignore[attr-defined]
        held = await pool.get_connection()  # the pool's one connection, in use elsewhere
        try:
            await fails(store.get_session(sid), Overloaded, "overloaded")
        finally:
            await pool.release(held)
        # Busy is not down: the shard is not failed fast, the next call is served.
        assert (await store.get_session(sid)).id == sid
    finally:
        await store.close()
        server.close()
