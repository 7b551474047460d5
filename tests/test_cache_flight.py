"""Single-flight across processes on each Redis topology: a follower learns that its
leader let go from the flight's stream at once, not from a poll (agentd/cache/flight.py).

Two stores on their own connections stand for two instances. A follower's reads of the
stream are counted with ``INFO commandstats``: one blocking ``XREAD`` per follower, that
the leader's word ends, however long a read may block (here a minute: a follower that
waited for its read to time out would miss the tests' limits)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio

from agentd.backends import Chunk
from agentd.cache import CachedReply, ResponseCache, flight
from agentd.config import Config, from_dict
from agentd.errors import UpstreamError
from agentd.store import Store, open_store

from .procs import RedisClusterProcs, RedisServer
from .waiting import wait_until

LEASE = 30.0  # no lock expires during a test: every ending is the leader's word
KEY = b"f" * 16
# Bounds on Redis calls (far above what a loaded machine needs) that let a follower's
# XREAD block as long as TAIL_BLOCK_S says (the block is kept under the call timeout).
REDIS = {"connect_timeout": 30.0, "timeout": 120.0}


@pytest.fixture(params=["single", "sharded", "cluster"])
def topology(request: pytest.FixtureRequest) -> tuple[Config, list[int]]:
    """A config for the topology, and its servers' ports."""
    if request.param == "cluster":
        cluster: RedisClusterProcs = request.getfixturevalue("redis_cluster")
        ports = [node.port for node in cluster.nodes]
        raw = {"urls": cluster.urls, "cluster": True, **REDIS}
    else:
        name = "redis_standalone" if request.param == "single" else "redis_shards"
        found = request.getfixturevalue(name)
        servers: list[RedisServer] = found if isinstance(found, list) else [found]
        ports = [server.port for server in servers]
        raw = {"urls": [server.url for server in servers], **REDIS}
    config = from_dict({"redis": raw, "cache": {"flight_lease": LEASE, "disk_path": ""}})
    return config, ports


@pytest.fixture
def slow_poll(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A follower's read blocks for a minute before it would check on its leader."""
    monkeypatch.setattr(flight, "TAIL_BLOCK_S", 60.0)
    yield


class Instances:
    """Two started stores and their caches on the same Redis servers."""

    def __init__(self, config: Config, ports: list[int]) -> None:
        self.config, self.ports = config, ports
        self.stores: list[Store] = [open_store(config) for _ in range(2)]
        self.caches = [ResponseCache(config.cache, store.blobs) for store in self.stores]
        self.policy = config.agents[0].cache

    async def total(self, section: str, field: str) -> int:
        """``field`` of ``INFO section`` summed over the servers (0 where absent)."""
        count = 0
        for port in self.ports:
            async with redis.asyncio.Redis(port=port) as client:
                info = await client.info(section)
            value = info.get(field, 0)
            count += int(value["calls"] if isinstance(value, dict) else value)
        return count

    async def reset_stats(self) -> None:
        for port in self.ports:
            async with redis.asyncio.Redis(port=port) as client:
                await client.config_resetstat()

    async def follow(self, index: int, produce: Any, into: list[Any]) -> None:
        deadline = asyncio.get_running_loop().time() + 120
        source, level = await self.caches[index].get(KEY, self.policy, produce, deadline)
        assert level == "miss" and not isinstance(source, CachedReply)
        async for item in source:
            into.append(item)

    async def blocked(self) -> bool:
        """Whether a follower is waiting on its blocking read."""
        return await self.total("clients", "blocked_clients") >= 1


@pytest.fixture
async def instances(topology: tuple[Config, list[int]]) -> AsyncIterator[Instances]:
    both = Instances(*topology)
    for store, cache in zip(both.stores, both.caches, strict=True):
        await store.start()
        await cache.start()
    yield both
    for store, cache in zip(both.stores, both.caches, strict=True):
        await cache.close()
        await store.close()


def never(name: str, calls: list[str]) -> Any:
    async def produce() -> AsyncIterator[Chunk]:
        calls.append(name)
        yield Chunk("own call", "stop", {"total_tokens": 1}, "n")

    return produce


async def test_a_follower_finds_at_once_the_reply_its_leader_found_in_the_cache(
    instances: Instances, slow_poll: None
) -> None:
    """A leader that found the reply in the cache (it was saved between a request's miss
    and its taking the lock) ends without a reply on the stream: letting go of the lock
    tells its follower, which looks the reply up then; no model call is made."""
    hexkey, calls, followed = KEY.hex(), [], []
    leader = instances.stores[0].blobs  # the leader's side, in "another instance"
    assert await leader.lead(hexkey, "leader", LEASE)
    await instances.reset_stats()
    follower = asyncio.create_task(instances.follow(1, never("b", calls), followed))
    await wait_until(instances.blocked, what="the follower's blocking read")
    reply = CachedReply(["cached ", "reply"], "stop", {"total_tokens": 2}, "n", None)
    await instances.caches[0].tiers.save(KEY, reply, instances.policy)
    await leader.release(hexkey, "leader", LEASE)
    await wait_until(follower.done, limit=30, what="the follower's reply")
    await follower
    assert followed[:-1] == ["cached ", "reply"] and followed[-1].level == "hit-l2"
    assert calls == []
    assert await instances.total("commandstats", "cmdstat_xread") == 1


async def test_a_follower_gets_the_reply_of_a_leader_at_once_and_reads_no_more(
    instances: Instances, slow_poll: None
) -> None:
    """A leader in another instance produces the reply: its follower's one read returns
    with each chunk, and the reply's end, with no read left waiting."""
    calls: list[str] = []
    led: list[Any] = []
    followed: list[Any] = []
    speak = asyncio.Event()

    async def produce() -> AsyncIterator[Chunk]:
        calls.append("a")
        await speak.wait()
        yield Chunk("one reply", "stop", {"total_tokens": 2}, "n")

    leader = asyncio.create_task(instances.follow(0, produce, led))
    await wait_until(lambda: calls == ["a"], what="the leader's call")
    follower = asyncio.create_task(instances.follow(1, never("b", calls), followed))
    await wait_until(instances.blocked, what="the follower's blocking read")
    await instances.reset_stats()
    speak.set()
    await wait_until(follower.done, limit=30, what="the follower's reply")
    await asyncio.gather(leader, follower)
    for items in (led, followed):
        assert items[:-1] == ["one reply"] and items[-1].level == "miss"
    assert calls == ["a"]
    # The read that got the chunk; the next got the end (and the leader's letting go).
    assert await instances.total("commandstats", "cmdstat_xread") <= 2
    assert not await instances.blocked()


async def test_a_leaders_error_reaches_its_follower_before_it_lets_go(
    instances: Instances, slow_poll: None
) -> None:
    """The error is on the stream before the lock is let go: the follower fails with it
    rather than take over and call the model a second time."""
    calls: list[str] = []
    fail = asyncio.Event()

    async def produce() -> AsyncIterator[Chunk]:
        calls.append("a")
        await fail.wait()
        raise UpstreamError("the model broke")
        yield  # an async generator

    leader = asyncio.create_task(instances.follow(0, produce, []))
    await wait_until(lambda: calls == ["a"], what="the leader's call")
    follower = asyncio.create_task(instances.follow(1, never("b", calls), []))
    await wait_until(instances.blocked, what="the follower's blocking read")
    fail.set()
    await wait_until(follower.done, limit=30, what="the follower's end")
    for task in (leader, follower):
        with pytest.raises(UpstreamError, match="the model broke"):
            await task
    assert calls == ["a"]
