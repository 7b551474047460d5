"""Tenants isolated end to end, on a real ``agentd serve`` (two workers) over a real
Redis, with API keys of two tenants: every kind of object one tenant makes (sessions,
their messages and events, shared state, Responses and their event streams, background
jobs, conversations and their items) answers another tenant exactly as a missing object
does (same status, same body), over HTTP, SSE and WebSocket; the same ids live apart
in each tenant; and the response cache is per tenant unless the agent shares it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest
import redis
from aiohttp import web

from .procs import AgentdProcess, RedisServer
from .waiting import wait_until

pytestmark = pytest.mark.slow

Start = Callable[..., AgentdProcess]

ADMIN_KEY = "sk-admin-" + "t" * 40
TIMEOUT = 30.0


def _config(redis_server: RedisServer | None) -> str:
    # Standalone mode (the memory store) runs one worker; with Redis, two.
    store = (
        "[server]\nworkers = 1\n"
        if redis_server is None
        else f'[server]\nworkers = 2\n[redis]\nurls = ["{redis_server.url}"]\n'
    )
    return f"""
{store}
[auth]
mode = "keys"
[[agents]]
name = "echo"
[agents.cache]
mode = "always"
[[agents]]
name = "shared"
shared_cache = true
[agents.cache]
mode = "always"
"""


class Api:
    def __init__(
        self, http: aiohttp.ClientSession, url: str, redis_server: RedisServer | None
    ) -> None:
        self.http = http
        self.url = url
        self.redis = redis_server  # None: the server runs on the memory store

    async def call(
        self,
        method: str,
        path: str,
        key: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """(status, JSON body or text) of one request with ``key``."""
        sent = {"Authorization": f"Bearer {key}", **(headers or {})}
        data = None
        if body is not None:
            data = orjson.dumps(body)
            sent.setdefault("Content-Type", "application/json")
        async with self.http.request(method, self.url + path, data=data, headers=sent) as r:
            raw = await r.read()
            if r.content_type == "application/json":
                return r.status, orjson.loads(raw)
            return r.status, raw.decode(errors="replace")

    async def ok(self, method: str, path: str, key: str, body: Any = None, **kw: Any) -> Any:
        status, found = await self.call(method, path, key, body, **kw)
        assert status in (200, 201), (method, path, status, found)
        return found

    async def new_key(self, tenant: str) -> str:
        made = await self.ok("POST", "/v1/admin/keys", ADMIN_KEY, {"tenant": tenant})
        return str(made["key"])

    async def hello(self, key: str, frame: dict[str, Any]) -> dict[str, Any]:
        """The first frame the server answers a WebSocket's hello with."""
        headers = {"Authorization": f"Bearer {key}"}
        async with self.http.ws_connect(self.url + "/v1/ws", headers=headers) as ws:
            await ws.send_str(orjson.dumps({"type": "hello", **frame}).decode())
            msg = await ws.receive(timeout=TIMEOUT)
            return orjson.loads(msg.data)  # type: ignore[no-any-return]


@pytest.fixture(params=["redis", "memory"])
async def api(agentd_instance: Start, request: pytest.FixtureRequest) -> AsyncIterator[Api]:
    """A server in keys mode over a real Redis (two workers) or its memory store."""
    redis_server = request.getfixturevalue("redis_standalone") if request.param == "redis" else None
    env = {"AGENTD_ADMIN_KEY": ADMIN_KEY}
    server = await asyncio.to_thread(agentd_instance, _config(redis_server), env=env)
    async with aiohttp.ClientSession() as http:
        yield Api(http, server.url, redis_server)


async def _completed(api: Api, key: str, rid: str) -> dict[str, Any]:
    found: dict[str, Any] = {}

    async def done() -> bool:
        found.update(await api.ok("GET", f"/v1/responses/{rid}", key))
        return found["status"] == "completed"

    await wait_until(done, what=f"response {rid} to complete")
    return found


def _probes(sid: str, bg: str, fg: str, conv: str, item: str) -> list[tuple[str, str, Any, Any]]:
    """Every way to reach one tenant's objects by id: (method, path, body, headers)."""
    user = [{"role": "user", "content": "let me in"}]
    item_body = {"items": [{"type": "message", "role": "user", "content": "let me in"}]}
    return [
        ("GET", f"/v1/sessions/{sid}", None, None),
        ("GET", f"/v1/sessions/{sid}/messages", None, None),
        ("GET", f"/v1/sessions/{sid}/messages?after=0", None, None),
        ("POST", f"/v1/sessions/{sid}/messages", {"messages": user}, None),
        ("GET", f"/v1/sessions/{sid}/events", None, None),
        ("GET", f"/v1/sessions/{sid}/events?after=0", None, None),
        ("POST", f"/v1/sessions/{sid}/events", {"type": "typing", "data": {}}, None),
        ("DELETE", f"/v1/sessions/{sid}", None, None),
        (
            "POST",
            "/v1/chat/completions",
            {"model": "echo", "messages": user},
            {"X-Session-Id": sid},
        ),
        (
            "POST",
            "/v1/chat/completions",
            {"model": "echo", "messages": user, "session_id": sid, "stream": True},
            None,
        ),
        ("GET", "/v1/state/team/doc", None, None),
        ("DELETE", "/v1/state/team/doc", None, None),
        ("DELETE", "/v1/state/team/doc", None, {"If-Match": '"1"'}),
        ("GET", f"/v1/responses/{bg}", None, None),
        ("GET", f"/v1/responses/{bg}?stream=true", None, None),
        ("GET", f"/v1/responses/{bg}?stream=true&starting_after=0", None, None),
        ("GET", f"/v1/responses/{fg}", None, None),
        ("GET", f"/v1/responses/{fg}/input_items", None, None),
        ("POST", f"/v1/responses/{bg}/cancel", None, None),
        ("DELETE", f"/v1/responses/{fg}", None, None),
        (
            "POST",
            "/v1/responses",
            {"model": "echo", "input": "go on", "previous_response_id": bg},
            None,
        ),
        ("POST", "/v1/responses", {"model": "echo", "input": "go on", "conversation": conv}, None),
        ("POST", "/v1/responses", {"model": "echo", "input": "go on", "session_id": sid}, None),
        (
            "POST",
            "/v1/responses",
            {"model": "echo", "input": "go on", "session_id": sid, "background": True},
            None,
        ),
        ("GET", f"/v1/conversations/{conv}", None, None),
        ("POST", f"/v1/conversations/{conv}", {"metadata": {"x": "y"}}, None),
        ("GET", f"/v1/conversations/{conv}/items", None, None),
        ("POST", f"/v1/conversations/{conv}/items", item_body, None),
        ("GET", f"/v1/conversations/{conv}/items/{item}", None, None),
        ("DELETE", f"/v1/conversations/{conv}/items/{item}", None, None),
        ("DELETE", f"/v1/conversations/{conv}", None, None),
    ]


async def test_another_tenants_objects_answer_exactly_as_missing_ones(api: Api) -> None:
    acme, globex = await api.new_key("acme"), await api.new_key("globex")

    # acme's objects: a session with a turn, a document, a background and a foreground
    # response, a conversation with an item.
    sid = (await api.ok("POST", "/v1/sessions", acme, {"metadata": {"owner": "acme"}}))["id"]
    turn = {"model": "echo", "messages": [{"role": "user", "content": "acme's secret"}]}
    await api.ok("POST", "/v1/chat/completions", acme, turn, headers={"X-Session-Id": sid})
    await api.ok("PUT", "/v1/state/team/doc", acme, {"secret": "acme"})
    background = {"model": "echo", "input": "acme bg", "background": True}
    bg = (await api.ok("POST", "/v1/responses", acme, background))["id"]
    # The job went through the shared queue as acme's and ran in acme's records.
    await _completed(api, acme, bg)
    fg = (await api.ok("POST", "/v1/responses", acme, {"model": "echo", "input": "acme fg"}))["id"]
    first = {"items": [{"type": "message", "role": "user", "content": "hi"}]}
    conv = (await api.ok("POST", "/v1/conversations", acme, first))["id"]
    item = (await api.ok("GET", f"/v1/conversations/{conv}/items", acme))["data"][0]["id"]
    acme_history = await api.ok("GET", f"/v1/sessions/{sid}/messages", acme)

    probes = _probes(sid, bg, fg, conv, item)
    crossed = [await api.call(m, p, globex, b, headers=h) for m, p, b, h in probes]
    hello, resume = {"session_id": sid}, {"session_id": sid, "after": 1}
    crossed_ws = await api.hello(globex, hello)
    assert await api.hello(globex, resume) == crossed_ws

    # Not one succeeded, and each is a 404 (never a 403).
    succeeded = [(p, r) for p, r in zip(probes, crossed, strict=True) if r[0] != 404]
    assert succeeded == [], succeeded
    assert crossed_ws["type"] == "error" and crossed_ws["code"] == "session_not_found"

    # acme's objects are whole: nothing of globex's reached them.
    assert await api.ok("GET", f"/v1/sessions/{sid}/messages", acme) == acme_history
    assert (await api.ok("GET", "/v1/state/team/doc", acme))["value"] == {"secret": "acme"}
    assert (await api.ok("GET", f"/v1/responses/{bg}", acme))["status"] == "completed"
    assert (await api.ok("GET", f"/v1/responses/{fg}", acme))["status"] == "completed"
    assert (await api.ok("GET", f"/v1/conversations/{conv}/items", acme))["data"][0]["id"] == item
    assert (await api.hello(acme, hello))["type"] == "ready"
    assert (await api.hello(acme, resume))["type"] == "ready"
    listed = await api.ok("GET", "/v1/sessions?limit=1000", globex)
    assert listed["data"] == []
    mine = (await api.ok("GET", "/v1/sessions?limit=1000", acme))["data"]
    assert sid in {s["id"] for s in mine} and {s["tenant"] for s in mine} == {"acme"}

    if api.redis is not None:  # in Redis, acme's objects are under acme's prefix
        with redis.Redis(port=api.redis.port) as plain:
            tenant_keys = (f"agentd:t:acme:s:{{{sid}}}:meta", f"agentd:t:acme:r:{{{bg}}}")
            assert plain.exists(*tenant_keys) == 2
            assert plain.exists(f"agentd:s:{{{sid}}}:meta", f"agentd:r:{{{bg}}}") == 0

    # Now make every object truly missing: the answers must be the same, byte for byte.
    await api.ok("DELETE", f"/v1/conversations/{conv}", acme)
    for path in (f"/v1/sessions/{sid}", "/v1/state/team/doc"):
        assert (await api.call("DELETE", path, acme))[0] == 204
    for rid in (bg, fg):
        await api.ok("DELETE", f"/v1/responses/{rid}", acme)
    missing = [await api.call(m, p, globex, b, headers=h) for m, p, b, h in probes]
    for probe, was, now in zip(probes, crossed, missing, strict=True):
        assert was == now, probe
    for frame in (hello, resume):
        assert await api.hello(globex, frame) == crossed_ws
        assert await api.hello(acme, frame) == crossed_ws


async def test_the_same_ids_live_apart_in_each_tenant(api: Api) -> None:
    acme, globex = await api.new_key("acme"), await api.new_key("globex")
    for key, owner in ((acme, "acme"), (globex, "globex")):
        # Taken in another tenant is not a conflict here: that would tell it exists.
        status, made = await api.call("POST", "/v1/sessions", key, {"id": "room-1"})
        assert status == 201, made
        assert made["tenant"] == owner
        status, doc = await api.call(
            "PUT", "/v1/state/team/doc", key, {"owner": owner}, headers={"If-None-Match": "*"}
        )
        assert (status, doc["version"]) == (201, 1)
    for key, owner in ((acme, "acme"), (globex, "globex")):
        assert (await api.ok("GET", "/v1/state/team/doc", key))["value"] == {"owner": owner}
        assert (await api.ok("GET", "/v1/sessions/room-1", key))["tenant"] == owner


async def _first_sse_messages(response: aiohttp.ClientResponse) -> dict[str, Any]:
    """The data of the first ``messages`` event of an SSE stream."""
    kind = ""
    async for line in response.content:
        text = line.decode().rstrip("\n")
        if text.startswith("event: "):
            kind = text[len("event: ") :]
        elif text.startswith("data: ") and kind == "messages":
            return orjson.loads(text[len("data: ") :])  # type: ignore[no-any-return]
    raise AssertionError("the stream ended")


async def test_watches_hear_only_their_tenants_session(api: Api) -> None:
    acme, globex = await api.new_key("acme"), await api.new_key("globex")
    for key in (acme, globex):
        await api.ok("POST", "/v1/sessions", key, {"id": "room-1"})

    async def post(key: str, text: str) -> None:
        body = {"messages": [{"role": "user", "content": text}]}
        await api.ok("POST", "/v1/sessions/room-1/messages", key, body)

    headers = {"Authorization": f"Bearer {acme}"}
    async with (
        api.http.get(api.url + "/v1/sessions/room-1/events", headers=headers) as sse,
        api.http.ws_connect(api.url + "/v1/ws", headers=headers) as ws,
    ):
        assert sse.status == 200
        await ws.send_str(orjson.dumps({"type": "hello", "session_id": "room-1"}).decode())
        ready = orjson.loads((await ws.receive(timeout=TIMEOUT)).data)
        assert ready["type"] == "ready"
        # globex's session of the same id is busy; then acme's own gets one message.
        for i in range(3):
            await post(globex, f"globex {i}")
        status, _ = await api.call(
            "POST", "/v1/sessions/room-1/events", globex, {"type": "typing", "data": {"g": 1}}
        )
        assert status == 202
        await post(acme, "acme 0")
        heard = await asyncio.wait_for(_first_sse_messages(sse), TIMEOUT)
        assert [m["content"] for m in heard["messages"]] == ["acme 0"]
        frame = orjson.loads((await ws.receive(timeout=TIMEOUT)).data)
        assert (frame["type"], frame["message"]["content"]) == ("event", "acme 0")


async def test_the_response_cache_is_per_tenant_unless_the_agent_shares_it(api: Api) -> None:
    acme, globex = await api.new_key("acme"), await api.new_key("globex")

    async def level(key: str, model: str) -> str:
        body = {"model": model, "messages": [{"role": "user", "content": "a private prompt"}]}
        async with api.http.post(
            api.url + "/v1/chat/completions",
            data=orjson.dumps(body),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        ) as r:
            await r.read()
            assert r.status == 200
            return r.headers["X-Cache"]

    assert await level(acme, "echo") == "miss"
    assert (await level(acme, "echo")).startswith("hit")
    # globex's identical request is not served acme's reply: its first is its own miss.
    assert await level(globex, "echo") == "miss"
    assert (await level(globex, "echo")).startswith("hit")
    assert await level(acme, "shared") == "miss"
    assert (await level(globex, "shared")).startswith("hit")


async def test_a_tenants_background_job_runs_and_reports_in_its_tenant(
    agentd_instance: Start, redis_standalone: RedisServer
) -> None:
    received: asyncio.Queue[bytes] = asyncio.Queue()

    async def hook(request: web.Request) -> web.Response:
        await received.put(await request.read())
        return web.Response(status=204)

    receiver = web.Application()
    receiver.router.add_post("/hook", hook)
    runner = web.AppRunner(receiver)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        config = (
            _config(redis_standalone) + f'[jobs]\nwebhook_url = "http://127.0.0.1:{port}/hook"\n'
        )
        env = {"AGENTD_ADMIN_KEY": ADMIN_KEY, "AGENTD_WEBHOOK_SECRET": "whsec_c2VjcmV0"}
        server = await asyncio.to_thread(agentd_instance, config, env=env)
        async with aiohttp.ClientSession() as http:
            api = Api(http, server.url, redis_standalone)
            acme = await api.new_key("acme")
            body = {"model": "echo", "input": "acme's private words", "background": True}
            rid = (await api.ok("POST", "/v1/responses", acme, body))["id"]
            event = orjson.loads(await asyncio.wait_for(received.get(), TIMEOUT))
            # The event names the response and carries nothing of its content.
            assert (event["type"], event["data"]) == ("response.completed", {"id": rid})
            assert b"private" not in orjson.dumps(event)
            assert (await api.ok("GET", f"/v1/responses/{rid}", acme))["status"] == "completed"
            # The job ran and reported in acme's record (the webhook marked as sent there).
            with redis.Redis(port=redis_standalone.port) as plain:
                assert plain.hget(f"agentd:t:acme:r:{{{rid}}}", "hook") == b"sent"
                assert not plain.exists(f"agentd:r:{{{rid}}}")
    finally:
        await runner.cleanup()
