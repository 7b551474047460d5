"""The response cache: levels, policy, single-flight, disk survival and clearing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis
import redis.asyncio
from aiohttp.test_utils import TestServer

from agentd.backends import Chunk
from agentd.cache import CachedReply, ResponseCache, Served, disk
from agentd.config import from_dict
from agentd.errors import AgentdError, UpstreamError
from agentd.metrics import Metrics
from agentd.server.app import create_app
from agentd.server.keys import CACHE
from agentd.store import open_store
from agentd.store.keys import flight_keys

from .openai_stub import Slow, StubNode
from .procs import RedisServer
from .waiting import wait_until

Factory = Callable[..., Any]


def agent_config(stub_url: str, tmp: Path, redis_url: str | None, **cache: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "backends": [{"name": "llm", "type": "openai", "urls": [stub_url]}],
        "agents": [{"name": "bot", "backend": "llm", "cache": cache}],
        "cache": {"disk_path": str(tmp / "l3.sqlite"), "l1_max_staleness": 0.2},
    }
    if redis_url:
        raw["redis"] = {"urls": [redis_url]}
    return raw


class Running:
    """An app serving on a real loopback port."""

    def __init__(self, server: TestServer) -> None:
        self.server = server
        self.url = str(server.make_url("")).rstrip("/")

    @property
    def cache(self) -> ResponseCache:
        return self.server.app[CACHE]  # type: ignore[index]


@pytest.fixture
async def serve() -> AsyncIterator[Factory]:
    servers: list[TestServer] = []

    async def start(raw: dict[str, Any]) -> Running:
        server = TestServer(create_app(from_dict(raw)), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return Running(server)

    yield start
    for server in servers:
        await server.close()


async def ask(
    http: aiohttp.ClientSession, url: str, text: str = "hi", **extra: Any
) -> tuple[int, str, Any]:
    body = {"model": "bot", "messages": [{"role": "user", "content": text}], "temperature": 0}
    body.update(extra)
    async with http.post(url + "/v1/chat/completions", json=body) as r:
        data = await r.read()
        if body.get("stream"):
            return r.status, r.headers.get("X-Cache", ""), data
        return r.status, r.headers.get("X-Cache", ""), orjson.loads(data)


async def test_levels_fill_each_other_and_serve_in_order(
    serve: Factory, tmp_path: Path, redis_standalone: RedisServer
) -> None:
    async with StubNode() as node:
        app = await serve(agent_config(node.url, tmp_path, redis_standalone.url))
        url = app.url
        async with aiohttp.ClientSession() as http:
            status, level, first = await ask(http, url)
            assert (status, level) == (200, "miss")
            assert (await ask(http, url))[1] == "hit-l1"
            app.cache.l1.clear()
            assert (await ask(http, url))[1] == "hit-l2"  # and it refilled L1:
            assert (await ask(http, url))[1] == "hit-l1"
            # Drop L1 and L2 (Redis): L3 (disk) answers, and fills both again.
            with redis.Redis(port=redis_standalone.port) as client:
                client.flushall()
            app.cache.l1.clear()
            status, level, third = await ask(http, url)
            assert (status, level) == (200, "hit-l3")
            assert third["choices"][0]["message"] == first["choices"][0]["message"]
            assert (await ask(http, url))[1] == "hit-l1"
            app.cache.l1.clear()
            assert (await ask(http, url))[1] == "hit-l2"
            # A clear empties every level.
            async with http.delete(url + "/v1/cache") as r:
                assert r.status == 200
            assert (await ask(http, url))[1] == "miss"
    assert len(node.requests) == 2  # the first miss and the one after the clear


@pytest.mark.parametrize(
    ("cache", "extra", "expected"),
    [
        ({"mode": "deterministic"}, {"temperature": 0}, "miss"),
        ({"mode": "deterministic"}, {"temperature": 0.7}, "bypass"),
        ({"mode": "deterministic"}, {}, "bypass"),  # no temperature: the upstream default
        ({"mode": "always"}, {"temperature": 0.7}, "miss"),
        ({"mode": "off"}, {"temperature": 0}, "bypass"),
    ],
)
async def test_policy_decides_what_is_cached(
    serve: Factory, tmp_path: Path, cache: dict[str, Any], extra: dict[str, Any], expected: str
) -> None:
    async with StubNode() as node:
        url = (await serve(agent_config(node.url, tmp_path, None, **cache))).url
        body = {"model": "bot", "messages": [{"role": "user", "content": "q"}], **extra}
        levels = []
        async with aiohttp.ClientSession() as http:
            for _ in range(2):
                async with http.post(url + "/v1/chat/completions", json=body) as r:
                    assert r.status == 200
                    levels.append(r.headers["X-Cache"])
    assert levels == [expected, "hit-l1" if expected == "miss" else "bypass"]
    assert len(node.requests) == (1 if expected == "miss" else 2)


async def test_ttl_and_size_limits_apply(serve: Factory, tmp_path: Path) -> None:
    async with StubNode() as node:
        url = (await serve(agent_config(node.url, tmp_path, None, ttl_s=0.3))).url
        async with aiohttp.ClientSession() as http:
            assert (await ask(http, url))[1] == "miss"
            assert (await ask(http, url))[1] == "hit-l1"
            await asyncio.sleep(0.5)  # a pause, not a wait: the 0.3 s TTL runs out
            assert (await ask(http, url))[1] == "miss"  # expired in L1 and L3
    async with StubNode() as node:
        url = (await serve(agent_config(node.url, tmp_path / "b", None, max_bytes=10))).url
        async with aiohttp.ClientSession() as http:
            assert (await ask(http, url))[1] == "miss"
            assert (await ask(http, url))[1] == "miss"  # too big to keep


async def test_a_cached_reply_streams_with_its_chunks_and_joins_the_session(
    serve: Factory, tmp_path: Path
) -> None:
    async with StubNode() as node:
        url = (await serve(agent_config(node.url, tmp_path, None))).url
        async with aiohttp.ClientSession() as http:
            status, level, raw = await ask(http, url, "one two three", stream=True)
            assert (status, level) == (200, "miss")
            live = _deltas(raw)
            status, level, raw = await ask(http, url, "one two three", stream=True)
            assert (status, level) == (200, "hit-l1")
            assert _deltas(raw) == live and len(live) > 1  # same chunk boundaries
            async with http.post(url + "/v1/sessions", json={}) as r:
                sid = orjson.loads(await r.read())["id"]
            status, level, body = await ask(http, url, "one two three", session_id=sid)
            # With a session the messages sent differ (none of its history yet, so the
            # same here): a hit, and still stored in the session.
            assert level == "hit-l1" and body["seq"] == 2
            async with http.get(f"{url}/v1/sessions/{sid}/messages") as r:
                history = orjson.loads(await r.read())["data"]
            assert [m["content"] for m in history] == ["one two three", "stub:one two three"]
    assert len(node.requests) == 1


def _deltas(raw: bytes) -> list[str]:
    out = []
    for line in raw.decode().splitlines():
        if line.startswith("data: {"):
            doc = orjson.loads(line[6:])
            if doc.get("choices") and doc["choices"][0]["delta"].get("content"):
                out.append(doc["choices"][0]["delta"]["content"])
    return out


async def test_identical_requests_in_flight_make_one_upstream_call(
    serve: Factory, tmp_path: Path, redis_standalone: RedisServer
) -> None:
    async with StubNode(Slow(first_s=0.3, between_s=0.01)) as node:
        raw = agent_config(node.url, tmp_path, redis_standalone.url)
        # Single-flight is promised with a reachable Redis; a Redis found unreachable is
        # a miss computed locally (docs/cache.md). The herd opens ~50 connections per
        # instance at once, which a loaded machine can make slower than the default 1 s
        # connect_timeout: that outage, not a flight, made a second call. Generous limits
        # keep the store reachable, so the one call below is single-flight's alone.
        raw["redis"].update(connect_timeout=30.0, timeout=30.0)
        url_a = (await serve(raw)).url
        url_b = (await serve(raw)).url  # a second "instance" on the same Redis
        async with aiohttp.ClientSession() as http:
            results = await asyncio.gather(
                *(ask(http, (url_a, url_b)[i % 2], "herd") for i in range(100))
            )
    assert {status for status, _, _ in results} == {200}
    assert {r[2]["choices"][0]["message"]["content"] for r in results} == {"stub:herd"}
    assert len(node.requests) == 1


async def test_a_follower_takes_over_from_a_leader_that_died(
    tmp_path: Path, redis_standalone: RedisServer
) -> None:
    config = from_dict({"redis": {"urls": [redis_standalone.url]},
                        "cache": {"flight_lease": 0.5, "disk_path": ""}})  # fmt: skip
    store = open_store(config)
    await store.start()
    cache = ResponseCache(config.cache, store.blobs)
    await cache.start()
    policy = config.agents[0].cache
    calls = 0

    async def produce() -> AsyncIterator[Chunk]:
        nonlocal calls
        calls += 1
        yield Chunk("took ", None, None, "n")
        yield Chunk("over", "stop", {"total_tokens": 2}, "n")

    try:
        key = b"k" * 16
        # A leader that took the lock and died: no stream, no release.
        assert await store.blobs.lead(key.hex(), "ghost", 0.5)
        loop = asyncio.get_running_loop()
        source, level = await cache.get(key, policy, produce, loop.time() + 20)
        assert level == "miss" and not isinstance(source, CachedReply)
        items = [i async for i in source]
        assert items[:-1] == ["took ", "over"] and items[-1].level == "miss"
        assert calls == 1
        # A leader that dies after a follower already passed text on: the follower fails
        # rather than mixing two replies.
        key2 = b"j" * 16
        assert await store.blobs.lead(key2.hex(), "ghost", 0.5)
        await store.blobs.emit(key2.hex(), {"t": b"partial "}, 5)
        got: list[Any] = []
        with pytest.raises(UpstreamError):
            source, _ = await cache.get(key2, policy, produce, loop.time() + 20)
            assert not isinstance(source, CachedReply)
            async for item in source:
                got.append(item)
        assert got == ["partial "] and calls == 1
    finally:
        await cache.close()
        await store.close()


async def test_a_leader_silent_past_its_lease_keeps_its_flight(
    redis_standalone: RedisServer,
) -> None:
    """The leader renews its lock and stream while its call runs, chunks or not: after a
    pause of several leases (a slow upstream), a follower on another instance reads the
    flight from its first chunk and no second model call is made."""
    lease = 1.5
    config = from_dict({"redis": {"urls": [redis_standalone.url], "connect_timeout": 30.0},
                        "cache": {"flight_lease": lease, "disk_path": ""}})  # fmt: skip
    stores = [open_store(config) for _ in range(2)]  # two instances
    caches = [ResponseCache(config.cache, store.blobs) for store in stores]
    policy = config.agents[0].cache
    speak, calls = asyncio.Event(), []

    def producer(name: str) -> Callable[[], AsyncIterator[Chunk]]:
        async def produce() -> AsyncIterator[Chunk]:
            calls.append(name)
            yield Chunk("slow ", None, None, "n")
            await speak.wait()  # silent for as long as the test holds it
            yield Chunk("reply", "stop", {"total_tokens": 2}, "n")

        return produce

    async def collect(index: int, into: list[Any]) -> None:
        source, level = await caches[index].get(key, policy, producer("ab"[index]), deadline)
        assert level == "miss" and not isinstance(source, CachedReply)
        async for item in source:
            into.append(item)

    key = b"s" * 16
    lock, _ = flight_keys(key.hex())
    deadline = asyncio.get_running_loop().time() + 120
    seen = {"pttl": 0, "renewals": 0}

    async def renewed(server: Any, times: int) -> bool:
        # A renewal puts the lock's remaining time back up: count the rises.
        pttl = await server.pttl(lock)
        seen["renewals"] += pttl > seen["pttl"] > 0
        seen["pttl"] = pttl
        return seen["renewals"] >= times

    for store, cache in zip(stores, caches, strict=True):
        await store.start()
        await cache.start()
    led: list[Any] = []
    followed: list[Any] = []
    async with redis.asyncio.Redis(port=redis_standalone.port) as server:
        try:
            leader = asyncio.create_task(collect(0, led))
            await wait_until(lambda: led == ["slow "], what="the leader's first chunk")
            # Silent for two leases and more: without renewals the lock and the stream
            # (its first chunk) would both have expired by now.
            await wait_until(lambda: renewed(server, 2 * 3 + 1), what="the lock's renewals")
            follower = asyncio.create_task(collect(1, followed))
            await wait_until(lambda: followed == ["slow "], what="the follower's first chunk")
            speak.set()
            await asyncio.gather(leader, follower)
        finally:
            speak.set()
            for store, cache in zip(stores, caches, strict=True):
                await cache.close()
                await store.close()
    for items in (led, followed):
        assert items[:-1] == ["slow ", "reply"] and items[-1].level == "miss"
    assert calls == ["a"]
    assert _lock_released(redis_standalone.port, lock)


def _lock_released(port: int, lock: str) -> bool:
    """Whether the flight's lock is gone (released at the end of the call)."""
    with redis.Redis(port=port) as client:
        return not client.exists(lock)


async def test_a_worker_that_could_not_take_the_lock_writes_nothing_to_the_stream(
    tmp_path: Path,
) -> None:
    """A worker whose store did not answer when it asked for the lock computes the reply
    for its own clients, and sends nothing to the stream of the leader that may hold the
    lock: that leader's followers get neither its chunks mixed into theirs nor its end."""
    server = RedisServer(tmp_path)
    config = from_dict({"redis": {"urls": [server.url], "timeout": 0.5, "down_retry": 0.1},
                        "cache": {"disk_path": ""}})  # fmt: skip
    store = open_store(config)
    await store.start()
    cache = ResponseCache(config.cache, store.blobs)
    await cache.start()
    policy, key = config.agents[0].cache, b"m" * 16
    hexkey = key.hex()
    resume, calls = asyncio.Event(), 0

    async def produce() -> AsyncIterator[Chunk]:
        nonlocal calls
        calls += 1
        await resume.wait()
        yield Chunk("mine", "stop", {"total_tokens": 1}, "n")

    async def answers() -> bool:
        with contextlib.suppress(AgentdError):
            await store.blobs.get(hexkey)
            return True
        return False

    items: list[Any] = []

    async def collect() -> None:
        source, _ = await cache.get(key, policy, produce, loop.time() + 60)
        assert not isinstance(source, CachedReply)
        async for item in source:
            items.append(item)

    loop = asyncio.get_running_loop()
    try:
        # A leader elsewhere holds the lock and has streamed its first chunk.
        assert await store.blobs.lead(hexkey, "elsewhere", 30)
        await store.blobs.emit(hexkey, {"t": b"theirs "}, 30)
        server.proc.send_signal(signal.SIGSTOP)
        try:
            asker = asyncio.create_task(collect())
            await wait_until(lambda: calls == 1, what="the call made without the lock")
        finally:
            server.proc.send_signal(signal.SIGCONT)
        await wait_until(answers, what="the store to answer again")
        resume.set()
        await asker
        assert items[:-1] == ["mine"] and items[-1].level == "miss"
        with redis.Redis(port=server.port) as client:
            lock, stream = flight_keys(hexkey)
            assert [fields for _, fields in client.xrange(stream)] == [{b"t": b"theirs "}]
            assert client.get(lock) == b"elsewhere"
    finally:
        await cache.close()
        await store.close()
        server.close()


async def test_l3_survives_a_restart_and_a_damaged_file_is_rebuilt(
    serve: Factory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with StubNode() as node:
        raw = agent_config(node.url, tmp_path, None)
        first = await serve(raw)
        async with aiohttp.ClientSession() as http:
            assert (await ask(http, first.url))[1] == "miss"
        await first.server.close()
        second = await serve(raw)  # as after a restart: same file, empty memory
        async with aiohttp.ClientSession() as http:
            assert (await ask(http, second.url))[1] == "hit-l3"
        await second.server.close()
        (tmp_path / "l3.sqlite").write_bytes(b"this is not a database" * 100)
        for suffix in ("-wal", "-shm"):
            (tmp_path / f"l3.sqlite{suffix}").unlink(missing_ok=True)
        caplog.set_level(logging.ERROR, logger="agentd.cache.disk")
        third = await serve(raw)
        async with aiohttp.ClientSession() as http:
            assert (await ask(http, third.url))[:2] == (200, "miss")
            third.cache.l1.clear()
            assert (await ask(http, third.url))[1] == "hit-l3"  # the new file works
        assert any("damaged" in r.getMessage() for r in caplog.records)
    assert len(node.requests) == 2


async def test_l1_is_asked_once_per_lookup_and_holds_the_hit_as_served(tmp_path: Path) -> None:
    config = from_dict({"cache": {"disk_path": str(tmp_path / "l3.sqlite")}})
    store = open_store(config)
    await store.start()
    metrics = Metrics()
    cache = ResponseCache(config.cache, store.blobs, metrics)
    await cache.start()
    policy = config.agents[0].cache
    key = b"k" * 16

    async def produce() -> AsyncIterator[Chunk]:
        raise AssertionError("nothing is produced: the stream is never read")
        yield

    deadline = asyncio.get_running_loop().time() + 20
    try:
        assert await cache.tiers.lookup(key, policy) is None
        source, level = await cache.get(key, policy, produce, deadline)
        assert level == "miss" and not isinstance(source, CachedReply)
        assert cache.l1.misses == 2  # one L1 look each, nothing counted as a hit
        reply = CachedReply(["took ", "over"], "stop", {"total_tokens": 2}, "n")
        await cache.tiers.save(key, reply, policy)
        hit = await cache.tiers.lookup(key, policy)
        assert hit == Served(reply, "hit-l1")
        assert await cache.tiers.lookup(key, policy) is hit  # no copy per hit
        assert await cache.get(key, policy, produce, deadline) == (hit.reply, "hit-l1")
        cache.l1.clear()
        below = await cache.tiers.lookup(key, policy)  # memory mode: no L2, so L3
        assert below == Served(reply, "hit-l3")
        refilled = await cache.tiers.lookup(key, policy)
        assert refilled is not None and refilled.level == "hit-l1" and refilled.reply == reply
    finally:
        await cache.close()
        await store.close()
    text = metrics.render().decode()
    assert 'agentd_cache_lookups_total{result="hit-l1"} 4.0' in text
    assert 'agentd_cache_lookups_total{result="hit-l3"} 1.0' in text
    assert 'result="miss"' not in text  # a miss is counted when the reply is produced


async def test_a_busy_l3_file_is_waited_for_and_never_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Workers of one instance open the same file at once. A file another connection holds
    locked is busy, not damaged: it used to be "rebuilt" (unlinked under the other worker,
    whose next statement failed with a disk I/O error, and the starting worker with it)."""
    path = tmp_path / "l3.sqlite"
    other = sqlite3.connect(path, isolation_level=None)  # as another worker's, mid-open
    other.execute("CREATE TABLE theirs (x)")
    other.execute("INSERT INTO theirs VALUES (1)")
    other.execute("BEGIN")
    other.execute("SELECT x FROM theirs").fetchall()  # its lock: no switch to WAL meanwhile
    made = path.stat().st_ino
    monkeypatch.setattr(disk, "BUSY_S", 0.05)
    monkeypatch.setattr(disk, "OPEN_WAIT_S", 0.3)
    caplog.set_level(logging.WARNING, logger="agentd.cache.disk")
    cache = disk.DiskCache(str(path), 1 << 20)
    try:
        await cache.start()  # it does not fail the worker's start either
        assert path.stat().st_ino == made
        assert any("busy" in r.getMessage() for r in caplog.records)
        assert not any("damaged" in r.getMessage() for r in caplog.records)
        other.execute("COMMIT")
        assert other.execute("SELECT x FROM theirs").fetchall() == [(1,)]
        await cache.put("k", b"v", 60)  # opened on first use, once the lock is gone
        assert await cache.get("k") == b"v"
        assert path.stat().st_ino == made
    finally:
        other.close()
        await cache.close()
