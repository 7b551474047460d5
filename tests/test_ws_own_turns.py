"""A connection's own turns never come back to it as events, whoever else watches the
session: connections taking turns in turn on one session, on one worker and on two
instances over one redis-server, each get every message once and in seq order (their
own turns as delta/done, the others' as events), and a resume afterwards replays all."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
from aiohttp.test_utils import TestServer

from agentd.config import from_dict
from agentd.server.app import create_app

from .procs import RedisServer

ROUNDS = 4


async def _frame(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await ws.receive(timeout=30)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return orjson.loads(msg.data)


async def _read(ws: aiohttp.ClientWebSocketResponse, upto: int, seen: list[int]) -> None:
    """Read frames until ``seen`` reaches seq ``upto``: a done adds its turn's two seqs
    (the user's message, the reply), an event its own; deltas add nothing."""
    while not seen or seen[-1] < upto:
        frame = await _frame(ws)
        if frame["type"] == "done":
            seen += [frame["seq"] - 1, frame["seq"]]
        elif frame["type"] == "event":
            seen.append(frame["seq"])
        else:
            assert frame["type"] == "delta", frame


async def _turns_in_turn(urls: list[str]) -> None:
    """One connection per url on one session; each makes a turn in its turn, ROUNDS
    times; then a fresh connection resumes from the start."""
    async with aiohttp.ClientSession() as http:
        conns = [await http.ws_connect(url) for url in urls]
        await conns[0].send_json({"type": "hello"})
        ready = await _frame(conns[0])
        sid = ready["session_id"]
        for ws in conns[1:]:
            await ws.send_json({"type": "hello", "session_id": sid})
            assert (await _frame(ws))["type"] == "ready"
        seen: list[list[int]] = [[] for _ in conns]
        last = 0
        for n in range(ROUNDS * len(conns)):
            turn = conns[n % len(conns)]
            await turn.send_json({"type": "message", "id": n, "content": f"turn {n}"})
            last += 2
            # Every connection, the turn's own included, reaches the turn's reply.
            await asyncio.gather(*(_read(ws, last, s) for ws, s in zip(conns, seen, strict=True)))
        expected = list(range(1, last + 1))
        assert all(s == expected for s in seen), seen
        # Nothing more is on its way to any of them (no own turn come back late).
        for ws in conns:
            await ws.send_json({"type": "ping"})
            assert (await _frame(ws)) == {"type": "pong"}
        async with http.ws_connect(urls[-1]) as late:
            await late.send_json({"type": "hello", "session_id": sid, "after": 0})
            assert (await _frame(late))["seq"] == last
            replayed: list[int] = []
            await _read(late, last, replayed)
            assert replayed == expected
        for ws in conns:
            await ws.close()


async def _servers(count: int, raw: dict[str, Any]) -> list[TestServer]:
    servers = []
    for _ in range(count):
        server = TestServer(create_app(from_dict(raw)), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
    return servers


RAW: dict[str, Any] = {
    "backends": [{"name": "echo", "type": "echo", "tokens_per_s": 0.0}],
    "cache": {"disk_path": ""},
}


async def test_connections_taking_turns_on_one_worker_see_each_message_once() -> None:
    (server,) = await _servers(1, RAW)
    try:
        url = str(server.make_url("/v1/ws"))
        await _turns_in_turn([url, url, url])
    finally:
        await asyncio.wait_for(server.close(), 30)


async def test_connections_taking_turns_on_two_instances_see_each_message_once(
    redis_standalone: RedisServer,
) -> None:
    servers = await _servers(2, {**RAW, "redis": {"urls": [redis_standalone.url]}})
    try:
        a, b = (str(s.make_url("/v1/ws")) for s in servers)
        await _turns_in_turn([a, a, b])
    finally:
        for server in servers:
            await asyncio.wait_for(server.close(), 30)
