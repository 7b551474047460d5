"""Fifty WebSockets watching one session in one worker: one store subscription (counted
on a real redis-server and through the store), every event to each in order, and a client
that stops reading is closed with 1013 (the documented rule) while the others go on."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp
import orjson
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer

from agentd.config import from_dict
from agentd.server.app import create_app
from agentd.server.keys import STORE
from agentd.store.keys import session_channel

from .procs import RedisServer
from .test_ws_slow_reader import _masked_text, silent_client
from .waiting import wait_until

WATCHERS = 50
TURNS = 18  # their events, ~8.6 MB, outgrow the kernel buffers (tcp_wmem max 4 MiB)


async def _frame(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await ws.receive(timeout=30)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return orjson.loads(msg.data)


async def _ready(ws: aiohttp.ClientWebSocketResponse, sid: str | None = None) -> dict[str, Any]:
    await ws.send_json({"type": "hello"} if sid is None else {"type": "hello", "session_id": sid})
    frame = await _frame(ws)
    assert frame["type"] == "ready", frame
    return frame


async def _events(ws: aiohttp.ClientWebSocketResponse, count: int) -> list[int]:
    seqs: list[int] = []
    while len(seqs) < count:
        frame = await _frame(ws)
        assert frame["type"] == "event", frame
        seqs.append(frame["seq"])
    return seqs


async def _slow_client(host: str, port: int, sid: str) -> socket.socket:
    """A raw client with a tiny receive buffer that says hello and never reads."""
    sock = await silent_client(host, port)
    hello = _masked_text(orjson.dumps({"type": "hello", "session_id": sid}))
    await asyncio.get_running_loop().sock_sendall(sock, hello)
    return sock


async def _redis_subscriptions(admin: aioredis.Redis | None) -> tuple[int, int]:
    """Redis connections holding subscriptions, and the channels they hold in all."""
    if admin is None:
        return (0, 0)
    counts = [int(c.get("sub", 0)) for c in await admin.client_list()]
    return sum(1 for n in counts if n), sum(counts)


async def _run(redis: RedisServer | None) -> None:
    raw: dict[str, Any] = {
        "backends": [{"name": "echo", "type": "echo", "tokens_per_s": 0.0}],
        "websocket": {"send_queue": 4},
        "cache": {"disk_path": ""},
    }
    if redis is not None:
        raw["redis"] = {"urls": [redis.url]}
    app = create_app(from_dict(raw))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    admin = aioredis.Redis(port=redis.port) if redis is not None else None
    url = server.make_url("/v1/ws")
    try:
        async with aiohttp.ClientSession() as http:
            driver = await http.ws_connect(url, max_msg_size=0)
            sid = (await _ready(driver))["session_id"]
            held = await _redis_subscriptions(admin)
            watchers = [await http.ws_connect(url, max_msg_size=0) for _ in range(WATCHERS)]
            for ws in watchers:
                await _ready(ws, sid)
            store = app[STORE]
            subs, watching = store.watch_counts()
            assert (subs, watching) == (1, WATCHERS + 1)  # the driver watches it too
            if admin is not None:
                channel = session_channel(sid)
                assert dict(await admin.pubsub_numsub(channel))[channel.encode()] == 1
                # Fifty more watchers: no more connections, no more channels on them.
                assert await _redis_subscriptions(admin) == held
            slow = await _slow_client("127.0.0.1", server.port, sid)
            await wait_until(lambda: store.watch_counts()[1] == WATCHERS + 2, what="slow hello")
            try:
                # Big turns: their events (user + echoed reply, ~0.5 MB each) outgrow
                # what the kernel buffers for the slow client, whose queue then fills.
                words = " ".join(f"w{i:011d}" for i in range(20_000))
                readers = [asyncio.create_task(_events(ws, 2 * TURNS)) for ws in watchers]
                for i in range(TURNS):
                    await driver.send_json({"type": "message", "id": i, "content": words})
                    while (await _frame(driver))["type"] != "done":
                        pass
                got = await asyncio.wait_for(asyncio.gather(*readers), 120)
                assert all(seqs == list(range(1, 2 * TURNS + 1)) for seqs in got)
                # The slow one was closed with 1013 and left the subscription.
                await wait_until(
                    lambda: store.watch_counts() == (1, WATCHERS + 1),
                    what="the slow client dropped",
                )
            finally:
                slow.close()
            for ws in watchers:
                await ws.close()
            await driver.close()
            await wait_until(lambda: store.watch_counts() == (0, 0), what="every watch closed")
    finally:
        if admin is not None:
            await admin.aclose()
        await asyncio.wait_for(server.close(), 30)


async def test_fifty_websockets_on_a_session_share_one_redis_subscription(
    redis_standalone: RedisServer,
) -> None:
    await _run(redis_standalone)


async def test_fifty_websockets_on_a_session_share_one_subscription_in_memory() -> None:
    await _run(None)
