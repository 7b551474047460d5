"""Graceful removal from a load balancer: on SIGTERM an instance fails /readyz first and
keeps serving for ``server.drain_delay_s``, then drains and exits 0 (real processes)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest

from .procs import AgentdProcess, RedisServer, fresh_connections
from .waiting import wait_until

pytestmark = pytest.mark.slow

Start = Callable[..., AgentdProcess]


def _config(redis: RedisServer, drain_delay_s: float) -> str:
    return f"""
[server]
workers = 2
shutdown_timeout = 10.0
drain_delay_s = {drain_delay_s}
[redis]
urls = ["{redis.url}"]
[[backends]]
name = "echo"
type = "echo"
"""


Outcome = tuple[str, int, Any]  # (what, HTTP status or 0 for a failure, body or error)


async def _loop(
    what: str,
    request: Callable[[], Awaitable[tuple[int, Any]]],
    stop: asyncio.Event,
    outcomes: list[Outcome],
) -> None:
    """Send one request after another until told to stop, recording every outcome."""
    while not stop.is_set():
        try:
            status, body = await request()
        except Exception as exc:  # any failure counts
            outcomes.append((what, 0, repr(exc)))
        else:
            outcomes.append((what, status, body))


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url, timeout=aiohttp.ClientTimeout(total=10)) as r:
        return r.status, orjson.loads(await r.read())


async def _chat(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    body = {"model": "echo", "messages": [{"role": "user", "content": "still there?"}]}
    async with http.post(
        url + "/v1/chat/completions", json=body, timeout=aiohttp.ClientTimeout(total=10)
    ) as r:
        return r.status, orjson.loads(await r.read())


async def _ws_turn(ws: aiohttp.ClientWebSocketResponse, turn_id: str) -> dict[str, Any]:
    await ws.send_json({"type": "message", "id": turn_id, "content": "over the socket"})
    while True:
        frame = orjson.loads((await ws.receive(timeout=10)).data)
        if frame["type"] in ("done", "error"):
            return frame


def _count(outcomes: list[Outcome], what: str, status: int) -> int:
    return sum(1 for w, s, _ in outcomes if w == what and s == status)


async def test_sigterm_fails_readiness_and_keeps_serving_through_the_delay(
    agentd_instance: Start, redis_standalone: RedisServer
) -> None:
    # A delay far longer than the test: a second SIGTERM ends it (and drains at once).
    proc = agentd_instance(_config(redis_standalone, drain_delay_s=600.0))
    stop = asyncio.Event()
    outcomes: list[Outcome] = []
    async with (
        fresh_connections() as http,
        aiohttp.ClientSession() as ws_http,
        ws_http.ws_connect(proc.url + "/v1/ws") as ws,
    ):
        await ws.send_json({"type": "hello"})
        assert orjson.loads((await ws.receive(timeout=10)).data)["type"] == "ready"
        clients = [
            asyncio.create_task(_loop(what, request, stop, outcomes))
            for what, request in (
                ("chat", lambda: _chat(http, proc.url)),
                ("chat", lambda: _chat(http, proc.url)),
                ("healthz", lambda: _get(http, proc.url + "/healthz")),
                ("readyz", lambda: _get(http, proc.url + "/readyz")),
            )
        ]
        try:
            await wait_until(lambda: _count(outcomes, "chat", 200) >= 5, what="traffic")
            proc.send(signal.SIGTERM)
            await wait_until(lambda: _count(outcomes, "readyz", 503), what="/readyz to fail")
            # Every worker is told, not only the one that answered.
            await wait_until(lambda: proc.log().count("instance leaving") == 2, what="workers")
            unready_at = len(outcomes)
            assert (await _ws_turn(ws, "during-delay"))["type"] == "done"

            def served_on() -> bool:
                after = outcomes[unready_at:]
                return all(_count(after, w, s) >= 20 for w, s in
                           (("chat", 200), ("healthz", 200), ("readyz", 503)))  # fmt: skip

            await wait_until(served_on, what="requests answered while unready")
        finally:
            stop.set()
            await asyncio.gather(*clients)
        assert proc.proc.poll() is None, "the instance left before its delay"
        failed = [o for o in outcomes if o[1] not in ((200, 503) if o[0] == "readyz" else (200,))]
        assert failed == [], failed[:5]
        first_503 = next(i for i, o in enumerate(outcomes) if o[1] == 503)
        readyz_after = [(s, b) for w, s, b in outcomes[first_503:] if w == "readyz"]
        assert {s for s, _ in readyz_after} == {503}
        assert readyz_after[0][1] == {"status": "draining"}
        assert all(o[1] == 200 for o in outcomes[:first_503] if o[0] == "readyz")

        # Another SIGTERM ends the delay: the drain closes WebSockets with a hint to come back.
        proc.send(signal.SIGTERM)
        msg = await ws.receive(timeout=30)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert msg.data == 1001
        assert "reconnect" in msg.extra
    assert await asyncio.to_thread(proc.wait_exit, 30) == 0


async def test_the_drain_follows_the_delay_by_itself_then_exits_0(
    agentd_instance: Start, redis_standalone: RedisServer
) -> None:
    proc = agentd_instance(_config(redis_standalone, drain_delay_s=3.0))
    async with fresh_connections() as http:
        proc.send(signal.SIGTERM)

        async def unready() -> bool:
            status, body = await _get(http, proc.url + "/readyz")
            return status == 503 and body == {"status": "draining"}

        await wait_until(unready, what="/readyz to fail")
        assert (await _chat(http, proc.url))[0] == 200
    assert await asyncio.to_thread(proc.wait_exit, 30) == 0
    log = proc.log()
    leaving = log.index("/readyz fails from now on; draining in 3.0s")
    assert leaving < log.index("stopping: draining 2 worker(s)") < log.index("bye")


async def test_while_leaving_every_answer_closes_its_connection(
    agentd_instance: Start, redis_standalone: RedisServer
) -> None:
    """A balancer's pooled connections to a leaving instance end one by one, each after
    an answer that says so, rather than being closed under a request when it drains."""
    proc = agentd_instance(_config(redis_standalone, drain_delay_s=600.0))
    async with aiohttp.ClientSession() as http:
        async with http.get(proc.url + "/healthz") as r:
            assert r.status == 200 and r.headers.get("Connection", "").lower() != "close"
        proc.send(signal.SIGTERM)
        await wait_until(lambda: proc.log().count("instance leaving") == 2, what="workers")
        for _ in range(4):  # whichever worker answers
            status, _ = await _chat(http, proc.url)
            async with http.get(proc.url + "/healthz") as r:
                assert r.status == 200 and status == 200
                assert r.headers["Connection"].lower() == "close"
            # A stream the handler starts itself says it too: a balancer that pooled
            # its connection again when it ended could send a request as the drain
            # closes it.
            body = {
                "model": "echo",
                "stream": True,
                "messages": [{"role": "user", "content": "hi"}],
            }
            async with http.post(proc.url + "/v1/chat/completions", json=body) as r:
                assert r.status == 200 and r.content_type == "text/event-stream"
                assert r.headers["Connection"].lower() == "close"
                await r.read()
    proc.send(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait_exit, 30) == 0
