"""The WebSocket protocol on a real socket: turns, other connections, resume, hostile
frames, limits."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import aiohttp
import orjson
from aiohttp.test_utils import TestServer

from agentd.config import from_dict
from agentd.server import ws as ws_module
from agentd.server.app import create_app
from agentd.server.keys import STATE

from .chat_helpers import (
    Factory,
    echo,
)
from .procs import RedisServer
from .waiting import wait_until

# -- WebSocket ---------------------------------------------------------------------------


async def receive(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await ws.receive(timeout=10)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return orjson.loads(msg.data)


async def until(ws: aiohttp.ClientWebSocketResponse, kind: str) -> tuple[dict[str, Any], list]:
    """Frames up to the first of ``kind``; returns it and those before it."""
    before = []
    while (frame := await receive(ws))["type"] != kind:
        before.append(frame)
    return frame, before


async def test_websocket_turn_streams_then_reports_what_was_stored(serve: Factory) -> None:
    url = await serve()
    async with aiohttp.ClientSession() as http, http.ws_connect(url + "/v1/ws") as ws:
        await ws.send_json({"type": "hello"})
        ready = await receive(ws)
        assert ready["type"] == "ready" and ready["seq"] == 0
        await ws.send_json({"type": "message", "id": "m1", "content": "alpha beta gamma"})
        done, before = await until(ws, "done")
        assert "".join(f["content"] for f in before if f["type"] == "delta") == "alpha beta gamma"
        assert done["id"] == "m1" and done["seq"] == 2
        assert done["message"]["content"] == "alpha beta gamma"
        await ws.send_json({"type": "ping"})
        assert (await receive(ws))["type"] == "pong"
        async with http.get(f"{url}/v1/sessions/{ready['session_id']}/messages") as r:
            assert len(orjson.loads(await r.read())["data"]) == 2


async def test_websocket_sees_other_connections_and_resumes_without_gaps(serve: Factory) -> None:
    url = await serve()
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url + "/v1/ws") as a:
            await a.send_json({"type": "hello"})
            sid = (await receive(a))["session_id"]
            async with http.ws_connect(url + "/v1/ws") as b:
                await b.send_json({"type": "hello", "session_id": sid})
                assert (await receive(b))["type"] == "ready"
                await a.send_json({"type": "message", "id": 1, "content": "from a"})
                await until(a, "done")
                seen = [await receive(b), await receive(b)]
                assert [(f["type"], f["seq"]) for f in seen] == [("event", 1), ("event", 2)]
                assert seen[0]["message"]["content"] == "from a"
            # b is gone; a adds two turns; b comes back after seq 2.
            for i in (2, 3):
                await a.send_json({"type": "message", "id": i, "content": f"turn {i}"})
                await until(a, "done")
        async with http.ws_connect(url + "/v1/ws") as b:
            await b.send_json({"type": "hello", "session_id": sid, "after": 2})
            assert (await receive(b))["seq"] == 6
            replayed = [await receive(b) for _ in range(4)]
            assert [f["seq"] for f in replayed] == [3, 4, 5, 6]
            await b.send_json({"type": "ping"})
            assert (await receive(b))["type"] == "pong"  # nothing more, no duplicate


async def test_websocket_hostile_frames_get_errors_and_the_right_close_codes(
    serve: Factory,
) -> None:
    url = await serve(websocket={"max_frame_bytes": 4096})
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url + "/v1/ws") as ws:
            for send, code in [
                (ws.send_bytes(b"\x00\x01"), "unsupported_frame"),
                (ws.send_str("{oops"), "invalid_json"),
                (ws.send_str("[" * 400 + "]" * 400), "invalid_json"),
                (ws.send_str("[1]"), "invalid_frame"),
                (ws.send_json({"type": "dance"}), "unknown_type"),
                (ws.send_json({"type": "message", "content": "no id"}), "invalid_frame"),
                (ws.send_json({"type": "message", "id": 1, "content": 3}), "invalid_frame"),
                (ws.send_json({"type": "hello", "session_id": "missing"}), "session_not_found"),
                (ws.send_json({"type": "hello", "agent": "nobody"}), "model_not_found"),
                # Unhashable values where a name or an id belongs.
                (ws.send_json({"type": "hello", "agent": {}}), "invalid_frame"),
                (ws.send_json({"type": "hello", "after": 2**63}), "invalid_range"),
                (ws.send_json({"type": "cancel", "id": [1]}), "invalid_frame"),
                (ws.send_json({"type": "message", "id": {"a": 1}, "content": "x"}),
                 "invalid_frame"),
            ]:  # fmt: skip
                await send
                frame = await receive(ws)
                assert (frame["type"], frame["code"]) == ("error", code)
            await ws.send_json({"type": "ping"})
            assert (await receive(ws))["type"] == "pong"  # still alive
        async with http.ws_connect(url + "/v1/ws") as ws:
            await ws.send_str("x" * 10_000)
            msg = await ws.receive(timeout=10)
            assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1009
        async with http.ws_connect(url + "/v1/ws") as ws:
            # A text frame whose payload is not UTF-8.
            await ws._writer.send_frame(b"\xff\xfe", aiohttp.WSMsgType.TEXT)  # type: ignore[union-attr]
            msg = await ws.receive(timeout=10)
            assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1007
        async with http.get(url + "/healthz") as r:
            assert r.status == 200


async def test_websocket_limits_turns_per_connection_and_cancels(serve: Factory) -> None:
    url = await serve(websocket={"max_inflight_turns": 1}, **echo(latency_ms=500))
    async with aiohttp.ClientSession() as http, http.ws_connect(url + "/v1/ws") as ws:
        await ws.send_json({"type": "message", "id": "a", "content": "x"})
        assert (await receive(ws))["type"] == "ready"
        await ws.send_json({"type": "message", "id": "b", "content": "y"})
        frame = await receive(ws)
        assert (frame["type"], frame["code"], frame["id"]) == ("error", "too_many_turns", "b")
        await ws.send_json({"type": "message", "id": "a", "content": "again"})
        frame = await receive(ws)
        assert (frame["type"], frame["code"], frame["id"]) == ("error", "duplicate_id", "a")
        await ws.send_json({"type": "cancel", "id": "a"})
        assert (await receive(ws)) == {"type": "cancelled", "id": "a"}
        await ws.send_json({"type": "message", "id": "c", "content": "z"})
        done, _ = await until(ws, "done")
        assert done["id"] == "c" and done["seq"] == 2  # the cancelled turn stored nothing
        await ws.send_json({"type": "message", "id": "d", "content": 3})
        frame = await receive(ws)
        assert (frame["type"], frame["code"], frame["id"]) == ("error", "invalid_frame", "d")


async def test_a_cancel_right_behind_its_message_ends_the_turn(serve: Factory) -> None:
    # Both frames in one write: the server reads the cancel before the turn's task first
    # runs. Such a turn used to stay registered: no "cancelled" frame, its id refused as
    # duplicate_id and its place held, until the connection could run no turn at all.
    url = await serve(websocket={"max_inflight_turns": 2}, **echo(latency_ms=200))
    async with aiohttp.ClientSession() as http, http.ws_connect(url + "/v1/ws") as ws:
        await ws.send_json({"type": "hello"})
        assert (await receive(ws))["type"] == "ready"
        for i in range(10):
            await ws.send_str(orjson.dumps({"type": "message", "id": i, "content": "x"}).decode())
            await ws.send_str(orjson.dumps({"type": "cancel", "id": i}).decode())
            frame = await receive(ws)
            while frame["type"] == "delta":
                frame = await receive(ws)
            assert (frame["type"], frame["id"]) == ("cancelled", i), frame
        await ws.send_json({"type": "message", "id": "after", "content": "still here"})
        done, _ = await until(ws, "done")
        assert done["id"] == "after"


async def test_connections_closed_right_after_hello_leave_no_handler_behind(
    redis_standalone: RedisServer,
) -> None:
    # A hello with "after" reads the history through Redis; a close landing meanwhile
    # used to be dropped inside redis-py (Python 3.11's wait_for), leaving the watcher,
    # and so the handler, waiting for events forever.
    raw = {"redis": {"urls": [redis_standalone.url]}, "cache": {"disk_path": ""}}
    app = create_app(from_dict(raw))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            for i in range(60):
                ws = await http.ws_connect(server.make_url("/v1/ws"))
                await ws.send_str('{"type": "hello", "after": 0}')
                if i % 3:  # close at different points of the hello
                    await asyncio.sleep(0.001 * (i % 7))
                await ws.close()
        open_ = app[STATE].websockets
        await wait_until(lambda: not open_, what="every WebSocket handler to end")
    finally:
        await asyncio.wait_for(server.close(), 30)


async def test_a_long_lived_connection_keeps_no_state_per_finished_turn(serve: Factory) -> None:
    # Found by the soak (bench soak): each turn's id stayed in the connection's set of
    # its own turns for as long as the connection lived, so a WebSocket doing turns
    # for hours grew without bound.
    url = await serve(**echo(latency_ms=200))
    async with aiohttp.ClientSession() as http, http.ws_connect(url + "/v1/ws") as ws:
        await ws.send_json({"type": "hello"})
        ready = await receive(ws)
        (conn,) = [
            o
            for o in gc.get_objects()
            if isinstance(o, ws_module._Connection) and o.session_id == ready["session_id"]
        ]
        frames = []
        for i in range(8):
            await ws.send_json({"type": "message", "id": i, "content": f"turn {i}"})
            done, before = await until(ws, "done")
            assert done["id"] == i and done["seq"] == 2 * (i + 1)
            frames += before
        await ws.send_json({"type": "message", "id": "x", "content": "cancel me"})
        await ws.send_json({"type": "ping"})  # answered once the turn is under way
        _, before = await until(ws, "pong")
        frames += before
        await ws.send_json({"type": "cancel", "id": "x"})
        cancelled, before = await until(ws, "cancelled")
        assert cancelled["id"] == "x"
        frames += before
        await wait_until(lambda: not conn.events._own, what="no turn id left on the connection")
        # Its own turns still never come back to it as events.
        await ws.send_json({"type": "ping"})
        _, before = await until(ws, "pong")
        assert not [f for f in [*frames, *before] if f["type"] == "event"]
