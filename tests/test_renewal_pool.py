"""Lease renewals do not queue behind ordinary traffic: with every connection of the
store's main pool held by a blocking command (``redis.pool_size = 1``, one BLPOP per
shard or cluster node), turn leases and a job delivery, more at once than the renewal
pool has connections, are still renewed while those commands still block."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import pytest
import redis

from agentd.config import from_dict
from agentd.store import Store, open_store

from .waiting import wait_until

# Longer than the test ever waits for a connection: the main pool's blocking commands
# outlast the renewals, and a renewal waiting for the pool fails only after this.
TIMEOUT_S = 10.0
BLOCK_S = 8  # BLPOP's own timeout, under the socket timeout
SESSIONS = 8  # turn leases renewed at once


@pytest.fixture(params=["single", "sharded", "cluster"])
def redis_settings(request: pytest.FixtureRequest) -> dict[str, Any]:
    topology = request.param
    settings: dict[str, Any] = {"timeout": TIMEOUT_S}
    if topology == "single":
        settings["urls"] = [request.getfixturevalue("redis_standalone").url]
    elif topology == "sharded":
        settings["urls"] = [s.url for s in request.getfixturevalue("redis_shards")]
    else:
        settings["urls"] = request.getfixturevalue("redis_cluster").urls
        settings["cluster"] = True
    return settings


@pytest.fixture
async def stores(redis_settings: dict[str, Any]) -> AsyncIterator[tuple[Store, Store]]:
    """A store with the default pool (to set things up), and one whose pool is one
    connection per server (to fill)."""
    made = [
        open_store(from_dict({"redis": redis_settings})),
        open_store(from_dict({"redis": {**redis_settings, "pool_size": 1}})),
    ]
    for store in made:
        await store.start()
    yield made[0], made[1]
    for store in made:
        await store.close()


def _one_key_per_server(store: Any) -> list[tuple[str, str]]:
    """A key on each shard or cluster master, with the URL of the server holding it."""
    found: dict[str, str] = {}
    tag = 0
    shards = store.shards
    while True:
        key = f"test:busy:{{{tag}}}"
        if shards.cluster is not None:
            node = shards.cluster.get_node_from_key(key)
            url = f"redis://{node.host}:{node.port}"
            count = len(shards.cluster.get_primaries())
        else:
            url = shards.urls[shards.shard_of(key)]
            count = len(shards.urls)
        found.setdefault(url, key)
        if len(found) == count:
            return [(key, url) for url, key in found.items()]
        tag += 1


def _blocked_clients(urls: list[str]) -> Callable[[], bool]:
    def check() -> bool:
        for url in urls:
            with redis.Redis.from_url(url) as r:
                if int(r.info("clients")["blocked_clients"]) < 1:
                    return False
        return True

    return check


async def test_renewals_go_through_while_every_pool_connection_is_busy(
    stores: tuple[Store, Store],
) -> None:
    setup, store = stores[0], cast(Any, stores[1])
    sessions = [await setup.create_session() for _ in range(SESSIONS)]
    leases = [await setup.begin_turn(s.id, 0, TIMEOUT_S) for s in sessions]
    assert all(lease is not None for lease in leases)
    assert await setup.jobs.enqueue("default", 0, "job-1", 100)
    [delivery] = await wait_until(
        lambda: setup.jobs.take("default", 0, "worker-a", 1, 0.1), what="the job's delivery"
    )

    # Every connection of the main pool (one per shard / node) waits in a BLPOP.
    servers = _one_key_per_server(store)
    blockers = [
        asyncio.create_task(store.shards.call(key, lambda c, k=key: c.blpop(k, timeout=BLOCK_S)))
        for key, _ in servers
    ]
    try:
        await wait_until(_blocked_clients([url for _, url in servers]), what="the BLPOPs")

        # More renewals at once than the renewal pool has connections: they wait for
        # each other, none is refused.
        held = zip(sessions, leases, strict=True)
        renewed = await asyncio.gather(
            *(store.renew_turn(s.id, lease.token, TIMEOUT_S) for s, lease in held),
            store.jobs.renew(delivery, "worker-a"),
        )
        assert renewed == ["held"] * SESSIONS + [True]
        # They did not wait for the pool: its every connection still blocks.
        assert not any(b.done() for b in blockers)
    finally:
        for key, url in servers:
            with redis.Redis.from_url(url) as r:
                r.lpush(key, "go")
        done = await asyncio.gather(*blockers, return_exceptions=True)
    # Each BLPOP got its value: the pool's connections were in use all along.
    assert [tuple(d) for d in done] == [(k.encode(), b"go") for k, _ in servers], done
    for s, lease in zip(sessions, leases, strict=True):
        await setup.end_turn(s.id, lease.token, [])
