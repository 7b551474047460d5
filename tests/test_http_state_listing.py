"""Listing shared state over HTTP: ``GET /v1/state`` (namespaces) and
``GET /v1/state/{namespace}`` (documents), their pages and their errors, in a worker's
application over a real socket, and on a real ``agentd serve`` in keys mode over Redis:
credentials, scopes and tenants."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from agentd.config import from_dict
from agentd.server.app import create_app

from .procs import AgentdProcess
from .test_http_store import error

ADMIN_KEY = "sk-admin-" + "l" * 40


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(create_app(from_dict({})))) as client:
        yield client


async def listed(client: TestClient, path: str) -> dict[str, Any]:
    resp = await client.get(path)
    body = await resp.json()
    assert resp.status == 200, body
    assert body["object"] == "list"
    assert body["has_more"] == (body["next_after"] is not None)
    return body  # type: ignore[no-any-return]


async def test_namespaces_and_documents_in_pages(client: TestClient) -> None:
    for ns, keys in (("b-ns", ["x"]), ("a-ns", ["k3", "k1", "k2", "other"])):
        for key in keys:
            assert (await client.put(f"/v1/state/{ns}/{key}", json={"key": key})).status == 201
    await client.put("/v1/state/a-ns/k1", json={"key": "k1", "more": True})
    first = await listed(client, "/v1/state?limit=1")
    assert first["data"] == [{"object": "state.namespace", "name": "a-ns", "documents": 4}]
    assert first["next_after"] == "a-ns"
    second = await listed(client, "/v1/state?limit=1&after=a-ns")
    assert [n["name"] for n in second["data"]] == ["b-ns"]
    assert second["has_more"] is False
    docs = await listed(client, "/v1/state/a-ns?prefix=k&limit=2")
    assert docs["data"] == [
        {"object": "state.document", "key": "k1", "version": 2, "size": 24},
        {"object": "state.document", "key": "k2", "version": 1, "size": 12},
    ]
    rest = await listed(client, f"/v1/state/a-ns?prefix=k&limit=2&after={docs['next_after']}")
    assert [d["key"] for d in rest["data"]] == ["k3"] and rest["next_after"] is None
    assert (await listed(client, "/v1/state/a-ns"))["data"][-1]["key"] == "other"
    # Deleted: gone from the listing, and the namespace with it once empty.
    assert (await client.delete("/v1/state/b-ns/x")).status == 204
    assert [n["name"] for n in (await listed(client, "/v1/state"))["data"]] == ["a-ns"]
    assert (await listed(client, "/v1/state/b-ns"))["data"] == []


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("limit=0", "invalid_range"),
        ("limit=1001", "invalid_range"),
        ("limit=-1", "invalid_range"),
        ("limit=abc", "invalid_range"),
        ("limit=%D9%A3", "invalid_range"),  # an Arabic-Indic digit
        ("after=", "invalid_cursor"),
        ("after=a%20b", "invalid_cursor"),
        ("after=" + "x" * 201, "invalid_cursor"),
        ("after=%7Bns%7D", "invalid_cursor"),
    ],
)
async def test_bad_paging_is_400(client: TestClient, query: str, code: str) -> None:
    await error(await client.get("/v1/state?" + query), 400, code)
    await error(await client.get("/v1/state/ns?" + query), 400, code)


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/v1/state/ns?prefix=a%20b", "invalid_prefix"),
        ("/v1/state/ns?prefix=" + "p" * 201, "invalid_prefix"),
        ("/v1/state/bad%20ns", "invalid_namespace"),
        ("/v1/state/%7Bns%7D", "not_found"),  # aiohttp matches no brace: no route
        ("/v1/state/_ns", "invalid_namespace"),
    ],
)
async def test_bad_namespace_or_prefix_is_refused(client: TestClient, path: str, code: str) -> None:
    await error(await client.get(path), 404 if code == "not_found" else 400, code)


KEYS_MODE = """
[server]
workers = 2
[redis]
urls = ["{url}"]
[auth]
mode = "keys"
"""


async def test_credentials_scopes_and_tenants_on_a_real_server(
    agentd_instance: Callable[..., AgentdProcess], redis_standalone: Any
) -> None:
    config = KEYS_MODE.format(url=redis_standalone.url)
    env = {"AGENTD_ADMIN_KEY": ADMIN_KEY}
    server = await asyncio.to_thread(agentd_instance, config, env=env)
    async with aiohttp.ClientSession() as http:

        async def call(method: str, path: str, key: str | None, body: Any = None) -> Any:
            headers = {} if key is None else {"Authorization": f"Bearer {key}"}
            data = None if body is None else orjson.dumps(body)
            if data is not None:
                headers["Content-Type"] = "application/json"
            async with http.request(method, server.url + path, data=data, headers=headers) as r:
                return r.status, orjson.loads(await r.read())

        async def key_of(tenant: str, scopes: list[str] | None = None) -> str:
            body: dict[str, Any] = {"tenant": tenant}
            if scopes is not None:
                body["scopes"] = scopes
            status, made = await call("POST", "/v1/admin/keys", ADMIN_KEY, body)
            assert status == 201, made
            return str(made["key"])

        acme, globex = await key_of("acme"), await key_of("globex")
        chat_only = await key_of("acme", ["chat"])
        for ns, key in (("orders", "o1"), ("orders", "o2"), ("private", "p")):
            assert (await call("PUT", f"/v1/state/{ns}/{key}", acme, {"n": 1}))[0] == 201
        assert (await call("PUT", "/v1/state/orders/g1", globex, {"g": 1}))[0] == 201

        for path in ("/v1/state", "/v1/state/orders"):
            status, body = await call("GET", path, None)
            assert (status, body["error"]["code"]) == (401, "missing_api_key"), body
            status, body = await call("GET", path, "sk-not-a-key")
            assert (status, body["error"]["code"]) == (401, "invalid_api_key"), body
            status, body = await call("GET", path, chat_only)
            assert (status, body["error"]["code"]) == (403, "permission_denied"), body

        status, mine = await call("GET", "/v1/state", acme)
        assert status == 200
        assert [(n["name"], n["documents"]) for n in mine["data"]] == [
            ("orders", 2),
            ("private", 1),
        ]
        status, theirs = await call("GET", "/v1/state", globex)
        assert [(n["name"], n["documents"]) for n in theirs["data"]] == [("orders", 1)]
        status, docs = await call("GET", "/v1/state/orders", globex)
        assert [d["key"] for d in docs["data"]] == ["g1"]
        # Another tenant's namespace lists exactly as one that does not exist.
        assert await call("GET", "/v1/state/private", globex) == await call(
            "GET", "/v1/state/nothing-here", globex
        )
        assert (await call("GET", "/v1/state/private", globex))[1]["data"] == []
        # The admin key is the unnamed tenant's: none of these.
        assert (await call("GET", "/v1/state", ADMIN_KEY))[1]["data"] == []
