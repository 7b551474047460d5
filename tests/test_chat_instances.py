"""Chat across real ``agentd serve`` instances sharing one Redis."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import pytest

from .procs import ROOT, AgentdProcess, RedisServer, fresh_connections

pytestmark = pytest.mark.slow

Start = Callable[..., AgentdProcess]


def _config(redis: RedisServer, policy: str = "enqueue", tokens_per_s: float = 0.0) -> str:
    return f"""
[server]
workers = 2
shutdown_timeout = 5.0
[redis]
urls = ["{redis.url}"]
[sessions]
concurrent_turns = "{policy}"
turn_lease = 1.0
[[backends]]
name = "echo"
type = "echo"
latency_ms = 5.0
tokens_per_s = {tokens_per_s}
"""


async def _chat(http: aiohttp.ClientSession, url: str, sid: str, text: str) -> tuple[int, Any]:
    body = {"model": "echo", "messages": [{"role": "user", "content": text}], "session_id": sid}
    async with http.post(url + "/v1/chat/completions", json=body) as r:
        return r.status, orjson.loads(await r.read())


async def _history(http: aiohttp.ClientSession, url: str, sid: str) -> list[dict[str, Any]]:
    async with http.get(f"{url}/v1/sessions/{sid}/messages?limit=1000") as r:
        return orjson.loads(await r.read())["data"]


@pytest.mark.parametrize("policy", ["enqueue", "reject", "interrupt"])
async def test_concurrent_turns_through_two_instances_never_interleave(
    agentd_instance: Start, redis_standalone: RedisServer, policy: str
) -> None:
    a = agentd_instance(_config(redis_standalone, policy, tokens_per_s=200))
    b = agentd_instance(_config(redis_standalone, policy, tokens_per_s=200))
    async with fresh_connections() as http:
        async with http.post(a.url + "/v1/sessions", json={}) as r:
            sid = orjson.loads(await r.read())["id"]
        texts = [f"turn {i} " + "word " * 5 for i in range(10)]
        results = await asyncio.gather(
            *(_chat(http, (a, b)[i % 2].url, sid, texts[i]) for i in range(10))
        )
        history = await _history(http, a.url, sid)
    statuses = [status for status, _ in results]
    if policy == "reject":
        assert 200 in statuses and set(statuses) <= {200, 409}
        assert all(body["error"]["code"] == "session_busy" for s, body in results if s == 409)
    else:
        assert statuses == [200] * 10
    ok = statuses.count(200)
    assert [m["role"] for m in history] == ["user", "assistant"] * ok
    for user, reply in zip(history[::2], history[1::2], strict=True):
        assert user["turn"] == reply["turn"]
        if reply.get("status") == "cancelled":
            assert user["content"].startswith(reply["content"])
        else:
            assert reply["content"] == user["content"]
    assert [m["seq"] for m in history] == list(range(1, 2 * ok + 1))


async def _frames_until(ws: aiohttp.ClientWebSocketResponse, kind: str) -> list[dict[str, Any]]:
    frames = []
    while True:
        msg = await ws.receive(timeout=15)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        frames.append(orjson.loads(msg.data))
        if frames[-1]["type"] == kind:
            return frames


async def test_websocket_clients_on_two_instances_share_a_session_and_resume_elsewhere(
    agentd_instance: Start, redis_standalone: RedisServer
) -> None:
    a = agentd_instance(_config(redis_standalone, tokens_per_s=50))
    b = agentd_instance(_config(redis_standalone, tokens_per_s=50))
    async with fresh_connections() as http:
        wa = await http.ws_connect(a.url + "/v1/ws")
        await wa.send_json({"type": "hello"})
        ready = (await _frames_until(wa, "ready"))[-1]
        sid = ready["session_id"]
        wb = await http.ws_connect(b.url + "/v1/ws")
        await wb.send_json({"type": "hello", "session_id": sid})
        await _frames_until(wb, "ready")

        await wa.send_json({"type": "message", "id": 1, "content": "hello from a"})
        await _frames_until(wa, "done")
        seen_by_b = [await _frames_until(wb, "event") for _ in range(2)]
        assert [f[-1]["seq"] for f in seen_by_b] == [1, 2]
        await wb.send_json({"type": "message", "id": 1, "content": "hello from b"})
        await _frames_until(wb, "done")
        seen_by_a = [(await _frames_until(wa, "event"))[-1] for _ in range(2)]
        assert [(f["seq"], f["message"]["content"]) for f in seen_by_a] == [
            (3, "hello from b"), (4, "hello from b"),
        ]  # fmt: skip

        # b drops in the middle of a long reply of its own, after seq 4 ...
        long_text = " ".join(f"w{i}" for i in range(40))
        await wb.send_json({"type": "message", "id": 2, "content": long_text})
        frames = await _frames_until(wb, "delta")
        assert frames[-1]["id"] == 2
        await wb.close()
        # ... a adds a turn meanwhile, and b comes back on the other instance.
        await wa.send_json({"type": "message", "id": 2, "content": "while b was away"})
        await _frames_until(wa, "done")  # a's turn waited for b's: both are stored
        wb = await http.ws_connect(a.url + "/v1/ws")
        await wb.send_json({"type": "hello", "session_id": sid, "after": 4})
        await _frames_until(wb, "ready")
        got: list[dict[str, Any]] = []
        while len(got) < 4:  # b's own turn (still running when it left) and a's turn
            got.append((await _frames_until(wb, "event"))[-1])
        # b's turn held the session, so a's waited for it: b's pair first, then a's.
        assert [(f["seq"], f["message"]["content"]) for f in got] == [
            (5, long_text), (6, long_text), (7, "while b was away"), (8, "while b was away"),
        ]  # fmt: skip
        await wb.send_json({"type": "ping"})
        assert (await _frames_until(wb, "pong"))[-1] == {"type": "pong"}  # no duplicates
        await wa.close()
        await wb.close()


def test_the_terminal_client_streams_replies(
    agentd_instance: Start, redis_standalone: RedisServer
) -> None:
    proc = agentd_instance(_config(redis_standalone))
    result = subprocess.run(
        [sys.executable, "-m", "agentd", "chat", "--url", proc.url],
        input="first line\nsecond line\n",
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("[session s_")
    # stdin is not a terminal: each line is shown after the prompt it answers.
    assert lines[1:] == [
        "you> first line",
        "assistant> first line",
        "you> second line",
        "assistant> second line",
        "you> ",
    ]
