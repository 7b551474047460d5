"""An idle WebSocket parks no task of its own (a worker holds tens of thousands): its
writer and its session watcher run only while there is something to send or forward,
and each burst of the session's events still reaches it, in order, on memory and Redis."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from agentd.server.ws import _Connection

from .procs import RedisServer
from .test_websocket import receive, until
from .waiting import wait_until

IDLE_LIMIT = 10.0
# The connection's own coroutines that may run a task; none runs while it idles.
OWN = {_Connection.read_on.__qualname__, _Connection.follow.__qualname__}


def _own_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if getattr(t.get_coro(), "__qualname__", "") in OWN]


@pytest.fixture(params=["memory", "redis"])
def config(request: pytest.FixtureRequest) -> dict[str, object]:
    if request.param == "memory":
        return {}
    redis: RedisServer = request.getfixturevalue("redis_standalone")
    return {"redis": {"urls": [redis.url]}, "cache": {"disk_path": ""}}


async def test_idle_connections_park_no_task_and_hear_each_burst(
    serve: object, config: dict[str, object]
) -> None:
    url = await serve(**config)  # type: ignore[operator]
    async with aiohttp.ClientSession() as http:
        a = await http.ws_connect(url + "/v1/ws")
        await a.send_json({"type": "hello"})
        sid = (await receive(a))["session_id"]
        watchers = []
        for after in (None, 0):  # live only, and with a catch-up from history
            ws = await http.ws_connect(url + "/v1/ws")
            await ws.send_json({"type": "hello", "session_id": sid, "after": after})
            assert (await receive(ws))["type"] == "ready"
            watchers.append(ws)
        await wait_until(lambda: not _own_tasks(), IDLE_LIMIT, "idle connections' tasks to end")
        for turn in (1, 2):  # each burst wakes a watcher that ends again
            await a.send_json({"type": "message", "id": turn, "content": f"turn {turn}"})
            await until(a, "done")
            for ws in watchers:
                seen = [await receive(ws), await receive(ws)]
                assert [f["seq"] for f in seen] == [2 * turn - 1, 2 * turn]
                assert seen[0]["message"]["content"] == f"turn {turn}"
            await wait_until(lambda: not _own_tasks(), IDLE_LIMIT, "the watchers to end")
        for ws in (a, *watchers):
            await ws.send_json({"type": "ping"})
            assert (await receive(ws))["type"] == "pong"  # nothing more, no duplicate
            await ws.close()
