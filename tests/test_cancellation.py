"""Cancellation safety: turns, watchers, event streams and WebSockets cancelled at every
point (inside store round trips too), on the in-memory store and on a real Redis, leave
nothing behind: no lease (the session's next turn may start at once), no task, no
subscription, no admission count, no open WebSocket in the gauge.

Each case runs the operation as a task and cancels it after k event-loop iterations, for
every k from 0 until the operation finishes before the cancel lands.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from agentd.agent import Agents, Listener, TurnRequest
from agentd.config import Config, from_dict
from agentd.server.app import create_app
from agentd.server.keys import AGENTS, METRICS, STATE, STORE
from agentd.store import Store, keys

from .procs import RedisServer
from .waiting import wait_until

# A released lease is free again at once; this limit only fails a test whose lease was
# left to run out (turn_lease below is twice as long). Generous: the suite's processes
# share two cores, and under that load 5 s ran out before the tasks had ended.
RELEASE_LIMIT = 30.0
TURN_LEASE = 60.0
# Enough iterations to see every operation below finish on its own.
MAX_K = 400


@pytest.fixture(params=["memory", "redis"])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[TestServer]:
    """An app on each store, whose second turn of a busy session is refused (409)."""
    raw: dict[str, Any] = {"cache": {"disk_path": ""}}
    if request.param == "redis":
        redis: RedisServer = request.getfixturevalue("redis_standalone")
        raw["redis"] = {"urls": [redis.url]}
    config: Config = from_dict(raw)
    config = dataclasses.replace(
        config,
        sessions=dataclasses.replace(
            config.sessions, concurrent_turns="reject", turn_lease=TURN_LEASE
        ),
    )
    app = create_app(config)
    test_server = TestServer(app, host="127.0.0.1")
    await test_server.start_server()
    yield test_server
    await asyncio.wait_for(test_server.close(), 30)


def _deadline() -> float:
    return asyncio.get_running_loop().time() + 30


def _say(sid: str, content: str) -> TurnRequest:
    return TurnRequest("echo", [{"role": "user", "content": content}], sid)


class _Yields(Listener):
    """A stream's reader: every delta costs an event-loop iteration (a socket write)."""

    async def delta(self, text: str) -> None:
        await asyncio.sleep(0)


def _tasks() -> set[asyncio.Task[Any]]:
    return {t for t in asyncio.all_tasks() if not t.done()}


async def _no_new_tasks(before: set[asyncio.Task[Any]]) -> None:
    def settled() -> bool:
        return not (_tasks() - before - {asyncio.current_task()})

    await wait_until(settled, RELEASE_LIMIT, f"tasks left behind: {_tasks() - before}")


async def _lease_free(store: Store, sid: str) -> None:
    async def free() -> bool:
        lease = await store.begin_turn(sid, 0, TURN_LEASE)
        if lease is None:
            return False
        await store.end_turn(sid, lease.token, [])
        return True

    await wait_until(free, RELEASE_LIMIT, "the session's lease to be let go")


async def _watchers(store: Store, sid: str) -> int:
    """Subscriptions to the session's events: the store's own, and (Redis) the server's."""
    channels = getattr(store, "_channels", None)
    if channels is not None:  # the in-memory store
        return len(channels._feeds.get(sid, ()))
    hub = store.hub  # type: ignore[attr-defined]
    channel = keys.session_channel(sid)
    local = sum(len(e.feeds.get(channel.encode(), ())) for e in hub._endpoints.values())
    client = store.shards.clients[store.shards.shard_of(channel)]  # type: ignore[attr-defined]
    [(_, remote)] = await client.pubsub_numsub(channel)
    return local + remote


async def _pubsub_connections(store: Store) -> int:
    """Pub/sub connections the Redis server has (0 on the in-memory store)."""
    if getattr(store, "shards", None) is None:
        return 0
    client = store.shards.clients[0]  # type: ignore[attr-defined]
    return len(await client.client_list(_type="pubsub"))


async def _no_watchers(store: Store, sid: str) -> None:
    async def none() -> bool:
        return await _watchers(store, sid) == 0

    await wait_until(none, RELEASE_LIMIT, "the session's subscriptions to end")


async def _cancel_at_every_point(
    operation: Callable[[int], Awaitable[Any]],
    check: Callable[[], Awaitable[None]],
    rounds: int = 1,
    again: bool = False,
) -> int:
    """Run ``operation(k)`` as a task, cancel it after k loop iterations, then ``check``;
    for k = 0, 1, … until the operation finishes twice before the cancel, ``rounds``
    times (a round trip to Redis takes a varying number of iterations, so each round
    lands elsewhere inside it). ``again`` cancels a second time two iterations after the
    first (a drain's cancel on top of a client's). Returns how many were cancelled."""
    cancelled = 0
    for _ in range(rounds):
        finished = 0
        for k in range(MAX_K):
            task = asyncio.ensure_future(operation(k))
            for _ in range(k):
                await asyncio.sleep(0)
            if task.done():
                finished += 1
            task.cancel()
            if again:
                for _ in range(2):
                    await asyncio.sleep(0)
                task.cancel()
            try:
                await asyncio.wait_for(asyncio.shield(task), RELEASE_LIMIT)
            except asyncio.CancelledError:
                cancelled += 1
            await check()
            if finished == 2:
                break
        else:
            raise AssertionError(f"the operation never finished within {MAX_K} iterations")
    return cancelled


@pytest.mark.parametrize("again", [False, True], ids=["once", "twice"])
async def test_a_turn_cancelled_anywhere_lets_everything_go(
    server: TestServer, again: bool
) -> None:
    agents: Agents = server.app[AGENTS]
    store = agents.store
    sid = (await store.create_session()).id
    before = _tasks()

    async def turn(k: int) -> Any:
        return await agents.run(
            _say(sid, f"turn {k} one two three"), deadline=_deadline(), listener=_Yields()
        )

    async def check() -> None:
        await _no_new_tasks(before)
        assert agents.admission.inflight == 0
        await _lease_free(store, sid)
        # A turn is stored whole or not at all.
        history = await store.history(sid)
        assert [m["role"] for m in history] == ["user", "assistant"] * (len(history) // 2)
        assert all(a["turn"] == b["turn"] for a, b in zip(history[::2], history[1::2], strict=True))

    # A lease granted as the cancellation lands is rare at any one point: many rounds.
    assert await _cancel_at_every_point(turn, check, rounds=8, again=again) > 3


async def test_a_watcher_cancelled_anywhere_lets_its_subscription_go(server: TestServer) -> None:
    store: Store = server.app[STORE]
    sid = (await store.create_session()).id
    await store.append(sid, [{"role": "user", "content": "caught up on"}])
    before = _tasks()

    async def watch(k: int) -> None:
        async with contextlib.aclosing(store.watch(sid, 0)) as events:  # type: ignore[type-var]
            async for event in events:
                assert event.kind == "messages"
                return  # the catch-up arrived: done

    connections = await _pubsub_connections(store)

    async def check() -> None:
        await _no_watchers(store, sid)
        await _no_new_tasks(before)
        # Watchers share the worker's pub/sub connection: none is opened per watcher.
        assert await _pubsub_connections(store) <= max(connections, 1)

    assert await _cancel_at_every_point(watch, check) > 0


async def test_an_event_stream_cancelled_anywhere_lets_its_watcher_go(server: TestServer) -> None:
    store: Store = server.app[STORE]
    sid = (await store.create_session()).id
    await store.append(sid, [{"role": "user", "content": "caught up on"}])
    url = server.make_url(f"/v1/sessions/{sid}/events?after=0")
    before = _tasks()

    async with aiohttp.ClientSession() as http:

        async def stream(k: int) -> None:
            async with http.get(url) as reply:
                assert reply.status == 200
                async for line in reply.content:
                    if line.startswith(b"event: messages"):
                        return

        async def check() -> None:
            await _no_watchers(store, sid)
            await _no_new_tasks(before)

        assert await _cancel_at_every_point(stream, check) > 0


async def test_a_websocket_closed_anywhere_leaves_no_handler(server: TestServer) -> None:
    app = server.app
    store: Store = app[STORE]
    sid = (await store.create_session()).id
    await store.append(sid, [{"role": "user", "content": "caught up on"}])
    gauge = app[METRICS].websockets
    open_before = gauge._value.get()
    before = _tasks()

    async with aiohttp.ClientSession() as http:

        async def connect(k: int) -> None:
            ws = await http.ws_connect(server.make_url("/v1/ws"))
            try:
                await ws.send_json({"type": "hello", "session_id": sid, "after": 0})
                await ws.send_json({"type": "message", "id": k, "content": "one two three"})
                while (await ws.receive_json()).get("type") != "done":
                    pass
            finally:
                await ws.close()

        async def check() -> None:
            await wait_until(lambda: not app[STATE].websockets, RELEASE_LIMIT, "handlers")
            assert gauge._value.get() == open_before
            await _no_watchers(store, sid)
            await _no_new_tasks(before)
            await _lease_free(store, sid)
            assert app[AGENTS].admission.inflight == 0

        assert await _cancel_at_every_point(connect, check) > 0
