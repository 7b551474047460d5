"""Several ``agentd serve`` instances sharing Redis shards, and a shard that fails under them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from agentd.fastpath import key_slot
from agentd.store.keys import session_keys

from .procs import AgentdProcess, RedisServer, fresh_connections
from .waiting import wait_until

pytestmark = pytest.mark.slow

Start = Callable[..., AgentdProcess]


def _config(urls: list[str], workers: int = 2, down_retry: float = 0.2) -> str:
    quoted = ", ".join(f'"{u}"' for u in urls)
    return (
        f"[server]\nworkers = {workers}\nshutdown_timeout = 5.0\n"
        f"[redis]\nurls = [{quoted}]\ndown_retry = {down_retry}\n"
    )


async def _json(resp: aiohttp.ClientResponse) -> Any:
    return orjson.loads(await resp.read())


async def _sse_events(resp: aiohttp.ClientResponse) -> Any:
    """Parse a Server-Sent Events body into (event, id, data) tuples as they arrive."""
    event, event_id, data = "message", None, []
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if line == "":
            if data:
                yield event, event_id, orjson.loads("\n".join(data))
            event, event_id, data = "message", None, []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(": ")
            if field == "event":
                event = value
            elif field == "id":
                event_id = value
            elif field == "data":
                data.append(value)


async def test_two_instances_share_sessions_and_events(
    agentd_instance: Start, redis_shards: list[RedisServer]
) -> None:
    urls = [s.url for s in redis_shards]
    a = agentd_instance(_config(urls))
    b = agentd_instance(_config(urls))
    async with fresh_connections() as http:
        async with http.post(a.url + "/v1/sessions", json={"metadata": {"team": "x"}}) as r:
            assert r.status == 201
            sid = (await _json(r))["id"]
        async with http.get(f"{b.url}/v1/sessions/{sid}") as r:
            assert r.status == 200
            assert (await _json(r))["metadata"] == {"team": "x"}

        # A watcher on B sees what is written through A, live, then a custom event.
        async with http.get(f"{b.url}/v1/sessions/{sid}/events?after=0") as stream:
            assert stream.status == 200
            events = _sse_events(stream)
            messages = [{"role": "user", "content": "hello from A"}]
            async with http.post(
                f"{a.url}/v1/sessions/{sid}/messages", json={"messages": messages}
            ) as r:
                assert r.status == 201, await r.text()
            kind, event_id, data = await asyncio.wait_for(anext(events), 10)
            assert (kind, event_id) == ("messages", "1")
            assert data["messages"][0]["content"] == "hello from A"
            async with http.post(
                f"{a.url}/v1/sessions/{sid}/events", json={"type": "typing", "data": {"who": "a"}}
            ) as r:
                assert r.status == 202
            kind, _, data = await asyncio.wait_for(anext(events), 10)
            assert (kind, data["data"]) == ("typing", {"who": "a"})

        # Resume on A from seq 1 with Last-Event-ID: only what came after.
        more = [{"role": "assistant", "content": "second"}, {"role": "user", "content": "third"}]
        async with http.post(f"{b.url}/v1/sessions/{sid}/messages", json={"messages": more}) as r:
            assert r.status == 201
        headers = {"Last-Event-ID": "1"}
        async with http.get(f"{a.url}/v1/sessions/{sid}/events", headers=headers) as stream:
            kind, event_id, data = await asyncio.wait_for(anext(_sse_events(stream)), 10)
            assert (kind, event_id) == ("messages", "3")
            assert [m["seq"] for m in data["messages"]] == [2, 3]

        async with http.get(f"{a.url}/v1/sessions/{sid}/messages?after=1") as r:
            assert [m["content"] for m in (await _json(r))["data"]] == ["second", "third"]


def _session_on(shard: int, shards: int, prefix: str) -> str:
    """A client-chosen session id whose keys land on ``shard``."""
    for i in range(10_000):
        sid = f"{prefix}-{i}"
        if key_slot(session_keys(sid)[0]) * shards // 16384 == shard:
            return sid
    raise AssertionError("no id found")


async def test_a_dead_shard_gives_503_for_its_sessions_only_until_it_returns(
    agentd_instance: Start, tmp_path: Path
) -> None:
    servers = [RedisServer(tmp_path, "--appendonly", "yes") for _ in range(3)]
    try:
        proc = agentd_instance(_config([s.url for s in servers]))
        sids = [_session_on(i, 3, f"fault{i}") for i in range(3)]
        async with fresh_connections() as http:
            for sid in sids:
                async with http.post(proc.url + "/v1/sessions", json={"id": sid}) as r:
                    assert r.status == 201
                msg = {"messages": [{"role": "user", "content": sid}]}
                async with http.post(f"{proc.url}/v1/sessions/{sid}/messages", json=msg) as r:
                    assert r.status == 201

            servers[2].stop()
            for _ in range(4):  # each worker finds out on its own
                async with http.get(f"{proc.url}/v1/sessions/{sids[2]}/messages") as r:
                    assert r.status == 503
                    assert (await _json(r))["error"]["code"] == "store_unavailable"
                for sid in sids[:2]:
                    async with http.get(f"{proc.url}/v1/sessions/{sid}/messages") as r:
                        assert r.status == 200
                        assert (await _json(r))["data"][0]["content"] == sid
            async with http.get(proc.url + "/readyz") as r:
                assert r.status == 503
                assert "shard 2" in str(await _json(r))

            servers[2].start()

            async def served() -> bool:
                async with http.get(f"{proc.url}/v1/sessions/{sids[2]}/messages") as r:
                    if r.status != 200:
                        return False
                    assert (await _json(r))["data"][0]["content"] == sids[2]
                    return True

            for _ in range(4):  # every worker serves the shard again, data intact
                await wait_until(served, what="the shard to serve again", poll_s=0.1)
            async with http.get(proc.url + "/readyz") as r:
                assert r.status == 200
    finally:
        for s in servers:
            s.close()


async def test_an_error_inside_a_started_event_stream_is_its_last_event(
    agentd_instance: Start, tmp_path: Path
) -> None:
    """The stream's 200 is sent: a failure after that (here, reading what it missed
    while Redis was away) ends the stream with an ``error`` event, where it used to
    leave the stream open and silent, or write a second HTTP response inside it."""
    server = RedisServer(tmp_path)  # in memory only: restarted, it has lost the session
    try:
        proc = agentd_instance(_config([server.url], workers=1))
        async with fresh_connections() as http:
            async with http.post(proc.url + "/v1/sessions", json={"id": "gone"}) as r:
                assert r.status == 201
            url = f"{proc.url}/v1/sessions/gone/events?after=0"
            async with http.get(url, timeout=aiohttp.ClientTimeout(total=60)) as stream:
                assert stream.status == 200
                await stream.content.readline()  # the opening comment: the stream runs
                server.stop()
                server.start()
                events = [e async for e in _sse_events(stream)]
    finally:
        server.close()
    # Refused by the shard while it is marked down, or found gone once it serves again.
    assert events == [("error", None, events[0][2])]
    assert events[0][2]["error"]["code"] in ("store_unavailable", "session_not_found")
