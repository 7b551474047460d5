"""Identities narrowed to some sessions or agents (as connection tokens may be), on an
in-process app whose requests carry the identity a test gives them: a session the
identity may not use, and everything reached through it (its messages, events,
conversation, responses, WebSocket hello), answers exactly as a missing one; an agent
it may not use is 403 wherever a request names one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiohttp.typedefs import Handler

from agentd.auth import ALL_SCOPES, Identity
from agentd.config import from_dict
from agentd.schema import conversation_id
from agentd.server.app import create_app
from agentd.server.auth import IDENTITY

# The identity of a request: {"tenant", "sessions"?, "agents"?} as JSON in this header.
AS = "X-Test-Identity"
TIMEOUT = 30.0


@web.middleware
async def _as_identity(request: web.Request, handler: Handler) -> web.StreamResponse:
    given = request.headers.get(AS)
    if given is not None:
        doc = orjson.loads(given)
        sessions, agents = doc.get("sessions"), doc.get("agents")
        request[IDENTITY] = Identity(
            tenant=doc["tenant"],
            scopes=ALL_SCOPES,
            kind="token",
            sessions=None if sessions is None else frozenset(sessions),
            agents=None if agents is None else frozenset(agents),
        )
    return await handler(request)


@pytest.fixture
async def url() -> AsyncIterator[str]:
    agents = [{"name": "echo"}, {"name": "other"}]
    app = create_app(from_dict({"agents": agents}))
    app.middlewares.append(_as_identity)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")).rstrip("/")
    await server.close()


def _as(tenant: str, **narrowed: Any) -> dict[str, str]:
    return {AS: orjson.dumps({"tenant": tenant, **narrowed}).decode()}


async def _call(
    http: aiohttp.ClientSession, url: str, who: dict[str, str], method: str, path: str, body: Any
) -> tuple[int, Any]:
    data = None if body is None else orjson.dumps(body)
    headers = {**who, "Content-Type": "application/json"}
    async with http.request(method, url + path, data=data, headers=headers) as r:
        raw = await r.read()
        return r.status, orjson.loads(raw) if r.content_type == "application/json" else raw


async def _hello(http: aiohttp.ClientSession, url: str, who: dict[str, str], frame: Any) -> Any:
    async with http.ws_connect(url + "/v1/ws", headers=who) as ws:
        await ws.send_str(orjson.dumps({"type": "hello", **frame}).decode())
        return orjson.loads((await ws.receive(timeout=TIMEOUT)).data)


async def test_a_session_outside_a_narrowed_identity_answers_as_a_missing_one(url: str) -> None:
    acme, initech = _as("acme"), _as("initech")
    narrowed = _as("acme", sessions=["mine"])
    async with aiohttp.ClientSession() as http:

        async def ok(who: dict[str, str], method: str, path: str, body: Any = None) -> Any:
            status, found = await _call(http, url, who, method, path, body)
            assert status in (200, 201), found
            return found

        user = [{"role": "user", "content": "x"}]
        for sid in ("mine", "other"):
            await ok(acme, "POST", "/v1/sessions", {"id": sid})
            await ok(acme, "POST", f"/v1/sessions/{sid}/messages", {"messages": user})
        conv = conversation_id("other")
        in_other = {"model": "echo", "input": "x", "session_id": "other"}
        rid = (await ok(acme, "POST", "/v1/responses", in_other))["id"]
        probes: list[tuple[str, str, Any]] = [
            ("GET", "/v1/sessions/other", None),
            ("GET", "/v1/sessions/other/messages", None),
            ("POST", "/v1/sessions/other/messages", {"messages": user}),
            ("GET", "/v1/sessions/other/events", None),
            ("POST", "/v1/sessions/other/events", {"type": "typing", "data": {}}),
            ("DELETE", "/v1/sessions/other", None),
            (
                "POST",
                "/v1/chat/completions",
                {"model": "echo", "messages": user, "session_id": "other"},
            ),
            ("GET", f"/v1/conversations/{conv}", None),
            ("GET", f"/v1/conversations/{conv}/items", None),
            ("DELETE", f"/v1/conversations/{conv}", None),
            ("GET", f"/v1/responses/{rid}", None),
            ("GET", f"/v1/responses/{rid}/input_items", None),
            ("DELETE", f"/v1/responses/{rid}", None),
            ("POST", "/v1/responses", {"model": "echo", "input": "x", "session_id": "other"}),
            ("POST", "/v1/responses", {"model": "echo", "input": "x", "conversation": conv}),
            (
                "POST",
                "/v1/responses",
                {"model": "echo", "input": "x", "previous_response_id": rid},
            ),
        ]
        # With bad input too, the answer is the missing session's (the same error first).
        bad_input: list[tuple[str, str, Any]] = [
            ("GET", "/v1/sessions/other/events?after=x", None),
            ("POST", "/v1/sessions/other/events", {"type": "Not A Name"}),
            ("GET", "/v1/sessions/-other", None),
            ("POST", "/v1/sessions", {"id": "other", "metadata": "not an object"}),
            ("GET", f"/v1/conversations/{conv}/items?after=bogus", None),
            ("GET", f"/v1/conversations/{conv}/items/bogus", None),
            (
                "POST",
                "/v1/chat/completions",
                {"model": "nope", "messages": user, "session_id": "other"},
            ),
            (
                "POST",
                "/v1/chat/completions",
                {"model": "echo", "messages": user, "session_id": "-other"},
            ),
            ("POST", "/v1/responses", {"model": "nope", "input": "x", "session_id": "other"}),
        ]
        for method, path, body in [*probes, *bad_input]:
            refused = await _call(http, url, narrowed, method, path, body)
            # initech has no such session: that is what "missing" answers.
            missing = await _call(http, url, initech, method, path, body)
            assert refused == missing, (method, path)
            assert refused[0] in ((400, 404) if (method, path, body) in bad_input else (404,))
        # Nor may it make a session of that id (initech may: it has none).
        refused = await _call(http, url, narrowed, "POST", "/v1/sessions", {"id": "other"})
        assert refused[0] == 404 and refused[1]["error"]["code"] == "session_not_found"
        assert (await _call(http, url, initech, "POST", "/v1/sessions", {"id": "other"}))[0] == 201
        refused_ws = await _hello(http, url, narrowed, {"session_id": "other"})
        assert refused_ws == await _hello(http, url, _as("globex"), {"session_id": "other"})
        assert refused_ws["code"] == "session_not_found"

        # What it may use works, and it lists only that.
        assert (await _hello(http, url, narrowed, {"session_id": "mine"}))["type"] == "ready"
        await ok(narrowed, "GET", "/v1/sessions/mine/messages")
        listed = await ok(narrowed, "GET", "/v1/sessions")
        assert [s["id"] for s in listed["data"]] == ["mine"]
        # Nothing of acme's was touched.
        assert (await ok(acme, "GET", "/v1/sessions/other"))["last_seq"] == 3
        assert (await ok(acme, "GET", f"/v1/responses/{rid}"))["status"] == "completed"


async def test_an_agent_outside_a_narrowed_identity_is_forbidden(url: str) -> None:
    narrowed = _as("acme", agents=["echo"])
    user = [{"role": "user", "content": "x"}]
    async with aiohttp.ClientSession() as http:
        for path, body in (
            ("/v1/chat/completions", {"model": "other", "messages": user}),
            ("/v1/responses", {"model": "other", "input": "x"}),
            ("/v1/completions", {"model": "other", "prompt": "x"}),
            ("/v1/embeddings", {"model": "other", "input": "x"}),
            ("/v1/sessions", {"agent": "other"}),
        ):
            status, found = await _call(http, url, narrowed, "POST", path, body)
            assert (status, found["error"]["code"]) == (403, "permission_denied"), path
        refused = await _hello(http, url, narrowed, {"agent": "other"})
        assert (refused["type"], refused["code"]) == ("error", "permission_denied")
        # Nor are its sessions searched (GET /v1/sessions?agent=NAME).
        status, found = await _call(http, url, narrowed, "GET", "/v1/sessions?agent=other", None)
        assert (status, found["error"]["code"]) == (403, "permission_denied")
        status, found = await _call(http, url, narrowed, "GET", "/v1/sessions?agent=echo", None)
        assert status == 200 and found["data"] == []
        allowed = {"model": "echo", "messages": user}
        status, _ = await _call(http, url, narrowed, "POST", "/v1/chat/completions", allowed)
        assert status == 200


async def test_an_identity_narrowed_to_sessions_starts_no_other_session(url: str) -> None:
    narrowed = _as("acme", sessions=["mine"])
    async with aiohttp.ClientSession() as http:
        refused = [
            await _call(http, url, narrowed, "POST", "/v1/sessions", {}),
            await _call(http, url, narrowed, "POST", "/v1/conversations", {}),
            await _call(
                http, url, narrowed, "POST", "/v1/responses", {"model": "echo", "input": "hi"}
            ),
        ]
        for status, body in refused:
            assert (status, body["error"]["code"]) == (403, "permission_denied"), body
        status, body = await _call(http, url, narrowed, "POST", "/v1/sessions", {"id": "mine"})
        assert status == 201 and body["id"] == "mine"
        body = {"model": "echo", "input": "hi", "session_id": "mine"}
        status, body = await _call(http, url, narrowed, "POST", "/v1/responses", body)
        assert status == 200 and body["status"] == "completed", body
        # Nothing was created by the refused calls: the tenant holds the one session.
        status, page = await _call(http, url, _as("acme"), "GET", "/v1/sessions", None)
        assert [s["id"] for s in page["data"]] == ["mine"]


async def test_models_lists_only_the_agents_an_identity_may_use(url: str) -> None:
    narrowed = _as("acme", agents=["other"])
    async with aiohttp.ClientSession() as http:
        status, page = await _call(http, url, narrowed, "GET", "/v1/models", None)
        assert status == 200 and [m["id"] for m in page["data"]] == ["other"]
        status, page = await _call(http, url, _as("acme"), "GET", "/v1/models", None)
        assert [m["id"] for m in page["data"]] == ["echo", "other"]
        status, body = await _call(http, url, narrowed, "GET", "/v1/models/echo", None)
        assert (status, body["error"]["code"]) == (403, "permission_denied")
        status, body = await _call(http, url, narrowed, "GET", "/v1/models/other", None)
        assert status == 200 and body["id"] == "other"
