"""A WebSocket ``hello`` the store fails gets an error frame with a stable code, and the
connection lives on (docs/protocol.md): the client may send ``hello`` again.

The failures are real ones of the worker's own redis-server: writes refused (NOREPLICAS,
an error the store has no code of its own for: it used to leave the client waiting for
an answer that never came), and the server stopped (``store_unavailable``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aredis
from aiohttp.test_utils import TestServer

from agentd.config import from_dict
from agentd.server.app import create_app

from .procs import RedisServer
from .test_websocket import receive


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone: it is made to fail, and stopped."""
    server = RedisServer(tmp_path / "own-redis")
    yield server
    server.close()


@pytest.fixture
async def ws_url(own_redis: RedisServer) -> AsyncIterator[str]:
    raw = {"redis": {"urls": [own_redis.url]}, "cache": {"disk_path": ""}}
    server = TestServer(create_app(from_dict(raw)), host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("/v1/ws"))
    await asyncio.wait_for(server.close(), 30)


async def _refuse_writes(redis: RedisServer, refuse: bool) -> None:
    client = aredis.Redis(port=redis.port)
    try:
        await client.config_set("min-replicas-to-write", 1 if refuse else 0)
    finally:
        await client.aclose()


async def test_a_hello_whose_write_the_store_refuses_is_answered_and_may_be_sent_again(
    own_redis: RedisServer, ws_url: str
) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url) as ws:
        await _refuse_writes(own_redis, True)
        await ws.send_json({"type": "hello"})  # creating a session writes
        error = await receive(ws)
        assert (error["type"], error["code"]) == ("error", "internal_error"), error
        assert "id" not in error
        # A message before any hello implies one: refused the same way, naming the turn.
        await ws.send_json({"type": "message", "id": "m1", "content": "hi"})
        error = await receive(ws)
        assert (error["type"], error["code"], error["id"]) == ("error", "internal_error", "m1")
        await ws.send_json({"type": "ping"})
        assert (await receive(ws))["type"] == "pong"

        await _refuse_writes(own_redis, False)
        await ws.send_json({"type": "hello"})
        ready = await receive(ws)
        assert ready["type"] == "ready" and ready["seq"] == 0, ready
        await ws.send_json({"type": "message", "id": "m2", "content": "hi again"})
        frame = await receive(ws)
        while frame["type"] == "delta":
            frame = await receive(ws)
        assert (frame["type"], frame["id"], frame["seq"]) == ("done", "m2", 2), frame


async def test_a_hello_while_the_store_is_stopped_is_answered_store_unavailable(
    own_redis: RedisServer, ws_url: str
) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(ws_url) as ws:
            await ws.send_json({"type": "hello"})
            session_id = (await receive(ws))["session_id"]
        own_redis.stop()
        async with http.ws_connect(ws_url) as ws:
            await ws.send_json({"type": "hello", "session_id": session_id})
            error = await receive(ws)
            assert (error["type"], error["code"]) == ("error", "store_unavailable"), error
            await ws.send_json({"type": "ping"})
            assert (await receive(ws))["type"] == "pong"
