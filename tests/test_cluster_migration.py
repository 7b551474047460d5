"""A command on a Redis Cluster slot that is being migrated waits for the move.

While a slot migrates, a script naming a key its node does not hold (a session's pub/sub
channel, a turn's lease: keys that exist only for a moment) is refused with ``TRYAGAIN``
until the slot's last key has moved, however long the slot takes to move: its size and
the load decide, not ``redis.timeout``. Such a call is retried until
``redis.migration_wait``, and fails with 503 only after it (docs/operations.md)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from agentd.config import from_dict
from agentd.errors import StoreUnavailable
from agentd.fastpath import key_slot
from agentd.store import Store, open_store

from .procs import RedisClusterProcs
from .store_helpers import new_session, seqs, user
from .test_durable_migration import Migration
from .waiting import wait_until

# Far more TRYAGAIN replies than one call can meet within redis.timeout (redis-py tries
# 16 times per call, pausing 50 ms for the last 8): the call outlived redis.timeout.
REFUSALS = 100


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcs]:
    procs = RedisClusterProcs(tmp_path_factory.mktemp("cluster"), 3)
    yield procs
    procs.close()


async def _store(cluster: RedisClusterProcs, migration_wait: float) -> Store:
    options = {"urls": cluster.urls, "cluster": True, "timeout": 1.0}
    store = open_store(from_dict({"redis": {**options, "migration_wait": migration_wait}}))
    await store.start()
    return store


@pytest.fixture
async def patient(cluster: RedisClusterProcs) -> AsyncIterator[Store]:
    store = await _store(cluster, 30.0)
    yield store
    await store.close()


@pytest.fixture
async def hasty(cluster: RedisClusterProcs) -> AsyncIterator[Store]:
    store = await _store(cluster, 0.5)
    yield store
    await store.close()


def _tryagains(cluster: RedisClusterProcs) -> int:
    return cluster.redirections().get("TRYAGAIN", 0)


def _half_moved(cluster: RedisClusterProcs, slot: int) -> Migration:
    """``slot`` marked migrating from its master to another, its keys not moved yet."""
    source = cluster.master_of_slot(slot)
    move = Migration(cluster, slot, next(n for n in cluster.nodes if n is not source))
    move.begin()
    return move


def _end(move: Migration) -> None:
    move.move_keys()
    move.finish()


async def test_an_append_on_a_migrating_slot_waits_for_the_move_past_redis_timeout(
    cluster: RedisClusterProcs, patient: Store
) -> None:
    sid = await new_session(patient, "before")
    move = await asyncio.to_thread(_half_moved, cluster, key_slot(sid))
    refused = _tryagains(cluster)
    append = asyncio.create_task(patient.append(sid, [user("during the move")]))
    try:
        await wait_until(
            lambda: append.done() or _tryagains(cluster) - refused >= REFUSALS, 30,
            "the append to be refused while the slot migrates",
        )  # fmt: skip
        # Refused for longer than redis.timeout, and still waiting rather than failed.
        assert not append.done(), append.exception()
    finally:
        await asyncio.to_thread(_end, move)
    appended = await asyncio.wait_for(append, 30)
    assert seqs(appended) == [2]
    assert cluster.master_of_key(sid) is move.target
    assert [m["content"] for m in await patient.history(sid)] == ["before", "during the move"]


async def test_a_migration_longer_than_migration_wait_fails_the_call_with_503(
    cluster: RedisClusterProcs, hasty: Store
) -> None:
    sid = await new_session(hasty, "before")
    move = await asyncio.to_thread(_half_moved, cluster, key_slot(sid))
    try:
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(hasty.append(sid, [user("during the move")]), 30)
    finally:
        await asyncio.to_thread(_end, move)
    assert seqs(await hasty.append(sid, [user("after the move")])) == [2]
