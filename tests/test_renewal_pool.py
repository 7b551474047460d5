"""Lease renewals do not queue behind ordinary traffic: with every connection of the
store's main pool held by a blocking command (``redis.pool_size = 1``, one BLPOP per
shard or cluster node), a turn lease and a job delivery are still renewed, over the
store's own renewal connections, while those commands still block."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis

from agentd.config import Config, from_dict
from agentd.store import Store, open_store

from .waiting import wait_until

# Longer than the test ever waits for a connection: the main pool's blocking commands
# outlast the renewals, and a renewal waiting for the pool fails only after this.
TIMEOUT_S = 10.0
BLOCK_S = 8  # BLPOP's own timeout, under the socket timeout


@pytest.fixture(params=["single", "sharded", "cluster"])
def busy_config(request: pytest.FixtureRequest) -> Config:
    topology = request.param
    settings: dict[str, Any] = {"pool_size": 1, "timeout": TIMEOUT_S}
    if topology == "single":
        settings["urls"] = [request.getfixturevalue("redis_standalone").url]
    elif topology == "sharded":
        settings["urls"] = [s.url for s in request.getfixturevalue("redis_shards")]
    else:
        settings["urls"] = request.getfixturevalue("redis_cluster").urls
        settings["cluster"] = True
    return from_dict({"redis": settings})


@pytest.fixture
async def busy_store(busy_config: Config) -> AsyncIterator[Store]:
    store = open_store(busy_config)
    await store.start()
    yield store
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
    busy_store: Store,
) -> None:
    store: Any = busy_store
    session = await store.create_session()
    # A cluster's index write goes on behind it: done before the pool of one is used again
    # (a cluster client refuses a second command on a node's only connection at once).
    await store.index_writes.flush()
    lease = await store.begin_turn(session.id, 0, TIMEOUT_S)
    assert lease is not None
    assert await store.jobs.enqueue("default", 0, "job-1", 100)
    [delivery] = await wait_until(
        lambda: store.jobs.take("default", 0, "worker-a", 1, 0.1), what="the job's delivery"
    )

    # Every connection of the main pool (one per shard / node) waits in a BLPOP.
    servers = _one_key_per_server(store)
    blockers = [
        asyncio.create_task(store.shards.call(key, lambda c, k=key: c.blpop(k, timeout=BLOCK_S)))
        for key, _ in servers
    ]
    try:
        await wait_until(_blocked_clients([url for _, url in servers]), what="the BLPOPs")

        assert await store.renew_turn(session.id, lease.token, TIMEOUT_S) == "held"
        assert await store.jobs.renew(delivery, "worker-a") is True
        # They did not wait for the pool: its every connection still blocks.
        assert not any(b.done() for b in blockers)
    finally:
        for key, url in servers:
            with redis.Redis.from_url(url) as r:
                r.lpush(key, "go")
        done = await asyncio.gather(*blockers, return_exceptions=True)
    # Each BLPOP got its value: the pool's connections were in use all along.
    assert [tuple(d) for d in done] == [(k.encode(), b"go") for k, _ in servers], done
    await store.end_turn(session.id, lease.token, [])
