"""How a turn's frames reach the socket: the frames sent in one step of the event loop
leave in one write, in the order they were sent; a turn on the in-memory store whose
echo reply is whole at once runs in one step, so its deltas and done are one write."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import aiohttp
import orjson
import pytest

from agentd.server import ws as ws_module
from agentd.server import ws_frames

from .chat_helpers import Factory, echo
from .test_websocket import receive, until
from .waiting import wait_until


class _CountingTransport:
    """The connection's real transport, keeping a copy of each write made through it."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _server_frames(data: bytes) -> list[dict[str, Any]]:
    """The text frames in bytes the server wrote (unmasked)."""
    frames, start = [], 0
    while (frame := ws_frames.next_frame(data, start, 1 << 20)) is not None:
        fin, opcode, payload, start = frame
        assert fin and opcode == ws_frames.OP_TEXT
        frames.append(orjson.loads(payload))
    assert start == len(data), "a partial frame in one write"
    return frames


def _connection(session_id: str) -> ws_module._Connection:
    (conn,) = [o for o in gc.get_objects()
               if isinstance(o, ws_module._Connection) and o.session_id == session_id]  # fmt: skip
    return conn


async def test_a_turn_whose_reply_is_whole_at_once_is_one_write_in_order(
    serve: Factory,
) -> None:
    url = await serve(**echo(latency_ms=0.0, tokens_per_s=0.0))
    async with aiohttp.ClientSession() as http, http.ws_connect(url + "/v1/ws") as ws:
        await ws.send_json({"type": "hello"})
        conn = _connection((await receive(ws))["session_id"])
        assert conn.transport is not None
        spy = _CountingTransport(conn.transport)
        conn.transport = spy  # type: ignore[assignment]
        for turn in range(3):  # the later turns replay history: still one step
            content = f"alpha beta gamma delta {turn}"
            await ws.send_json({"type": "message", "id": turn, "content": content})
            done, deltas = await until(ws, "done")
            assert [d["type"] for d in deltas] == ["delta"] * 5
            assert "".join(d["content"] for d in deltas) == content
            assert done["id"] == turn and done["seq"] == 2 * (turn + 1)
            assert done["message"]["content"] == content
            # What the client read is exactly one write of the server's, in its order.
            assert len(spy.writes) == turn + 1, f"turn {turn} took {len(spy.writes)} writes"
            assert _server_frames(spy.writes[-1]) == [*deltas, done]


async def test_a_control_frame_is_written_after_the_frames_sent_before_it(
    serve: Factory,
) -> None:
    url = await serve()
    async with aiohttp.ClientSession() as http, http.ws_connect(url + "/v1/ws") as ws:
        await ws.send_json({"type": "hello"})
        conn = _connection((await receive(ws))["session_id"])
        assert conn.transport is not None
        spy = _CountingTransport(conn.transport)
        conn.transport = spy  # type: ignore[assignment]
        # A frame waiting for the end of the step, then a close in the same step: the
        # close goes after it, not before (the client reads the frame, then the close).
        conn.send({"type": "event", "event": "note", "data": {"n": 1}})
        assert spy.writes == []
        await conn.close(code=1001, message=b"bye")
        msg = await ws.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.TEXT
        assert orjson.loads(msg.data) == {"type": "event", "event": "note", "data": {"n": 1}}
        msg = await ws.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1001
        assert len(spy.writes) == 2


async def test_live_session_events_are_forwarded_with_no_watcher_task(
    serve: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A turn's event reaches the other connections on the session without a task per
    event, and is never handed to the connection that made it (its turn came as
    delta/done): its watch takes the event as read as it arrives."""
    watchers: list[ws_module._Connection] = []
    forwarded: list[ws_module._Connection] = []
    follow, forward = ws_module._Connection.follow, ws_module._Connection.forward

    async def counted(conn: ws_module._Connection) -> bool:
        watchers.append(conn)
        return await follow(conn)

    def seen(conn: ws_module._Connection, event: Any) -> None:
        forwarded.append(conn)
        forward(conn, event)

    monkeypatch.setattr(ws_module._Connection, "follow", counted)
    monkeypatch.setattr(ws_module._Connection, "forward", seen)
    url = await serve(**echo(latency_ms=0.0, tokens_per_s=0.0))
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(url + "/v1/ws") as mine,
        http.ws_connect(url + "/v1/ws") as other,
    ):
        await mine.send_json({"type": "hello"})
        sid = (await receive(mine))["session_id"]
        mine_conn = _connection(sid)
        await other.send_json({"type": "hello", "session_id": sid})
        assert (await receive(other))["type"] == "ready"
        (other_conn,) = [o for o in gc.get_objects()
                         if isinstance(o, ws_module._Connection) and o.session_id == sid
                         and o is not mine_conn]  # fmt: skip
        await wait_until(lambda: mine_conn.watcher is None and other_conn.watcher is None)
        assert watchers == [mine_conn, other_conn]  # each hello's catch-up
        for turn in range(3):
            await mine.send_json({"type": "message", "id": turn, "content": f"turn {turn}"})
            done, _ = await until(mine, "done")
            assert mine_conn.watcher is None and mine_conn.events._own is None  # type: ignore[union-attr]
            user_event = await receive(other)
            reply_event = await receive(other)
            assert [user_event["seq"], reply_event["seq"]] == [done["seq"] - 1, done["seq"]]
            assert reply_event["message"] == done["message"]
            assert other_conn.watcher is None
        # Nothing of its own turns came back to the first connection as events.
        await mine.send_json({"type": "ping"})
        assert (await receive(mine))["type"] == "pong"
        assert watchers == [mine_conn, other_conn]  # no task for any turn's event
        assert forwarded == [other_conn] * 3  # one event per turn, to the other only


async def test_a_turn_that_never_waits_runs_with_no_task_and_one_that_waits_in_one(
    serve: Factory,
) -> None:
    """On the in-memory store, an echo turn whose reply is whole at once runs where its
    message frame is read, start to end; one that waits (a paced echo) goes on in a task,
    and can still be cancelled."""
    loop = asyncio.get_running_loop()
    made: list[str] = []

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        made.append(getattr(coro, "__qualname__", type(coro).__name__))
        return asyncio.Task(coro, loop=loop, **kwargs)

    url = await serve(agents=[{"name": "echo", "backend": "echo"},
                              {"name": "slow", "backend": "slow"}],
                      backends=[{"name": "echo", "type": "echo"},
                                {"name": "slow", "type": "echo", "latency_ms": 300}])  # fmt: skip
    async with aiohttp.ClientSession() as http, http.ws_connect(url + "/v1/ws") as ws:
        await ws.send_json({"type": "hello"})
        assert (await receive(ws))["type"] == "ready"
        loop.set_task_factory(factory)
        try:
            for turn in range(5):
                await ws.send_json({"type": "message", "id": turn, "content": "one two"})
                done, deltas = await until(ws, "done")
                assert (done["id"], len(deltas)) == (turn, 2)
            turn_tasks = [name for name in made if "run_turn" in name or "_Started" in name]
            assert turn_tasks == [], made
            await ws.send_json({"type": "message", "id": "s", "content": "slow", "agent": "slow"})
            await wait_until(lambda: "_Started" in made)
            await ws.send_json({"type": "cancel", "id": "s"})
            assert (await receive(ws)) == {"type": "cancelled", "id": "s"}
            await ws.send_json({"type": "message", "id": "s", "content": "again"})
            done, _ = await until(ws, "done")
            assert done["id"] == "s" and done["seq"] == 12  # the cancelled turn stored nothing
        finally:
            loop.set_task_factory(None)
