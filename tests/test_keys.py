"""API keys: the admin API, what a key may do, the official ``openai`` SDK with a key,
its revocation, the bad input every admin endpoint refuses, the audit lines, and how few
store look-ups a flood of invalid keys costs."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import openai
import orjson
import pytest
import redis

from agentd.auth.keys import KeyCache, hash_secret
from agentd.config import from_dict
from agentd.errors import Unauthorized
from agentd.store import KeyRecord, open_store

from .chat_helpers import Factory, chat_body
from .procs import RedisServer
from .waiting import wait_until

ADMIN_KEY = "sk-admin-" + "a" * 40
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
KEYS = "/v1/admin/keys"
AGENTS = [{"name": "echo", "backend": "echo"}, {"name": "other", "backend": "echo"}]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class Api:
    """An HTTP client of one server, with the admin key unless told otherwise."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url

    async def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        kw: dict[str, Any] = {"headers": ADMIN if headers is None else headers}
        if body is not None:
            kw["data"] = body if isinstance(body, bytes) else orjson.dumps(body)
            kw["headers"] = {**kw["headers"], "Content-Type": "application/json"}
        async with self.http.request(method, self.url + path, **kw) as r:
            raw = await r.read()
            return r.status, orjson.loads(raw) if raw else None

    async def create(self, **body: Any) -> dict[str, Any]:
        status, made = await self.call("POST", KEYS, {"tenant": "acme", **body})
        assert status == 201, made
        return made  # type: ignore[no-any-return]

    async def chat(self, key: str, model: str = "echo") -> tuple[int, Any]:
        return await self.call(
            "POST", "/v1/chat/completions", chat_body(model=model), headers=bearer(key)
        )

    async def everything(self) -> list[dict[str, Any]]:
        status, page = await self.call("GET", KEYS)
        assert status == 200, page
        return page["data"]  # type: ignore[no-any-return]


@pytest.fixture(params=["memory", "redis", "cluster"])
async def api(
    request: pytest.FixtureRequest, serve: Factory, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Api]:
    """A server in keys mode (memory store, one real Redis, or a Redis Cluster) and a
    client of it."""
    monkeypatch.setenv("AGENTD_ADMIN_KEY", ADMIN_KEY)
    raw: dict[str, Any] = {"auth": {"mode": "keys"}, "agents": AGENTS}
    if request.param == "redis":
        raw["redis"] = {"urls": [request.getfixturevalue("redis_standalone").url]}
    elif request.param == "cluster":
        raw["redis"] = {"urls": request.getfixturevalue("redis_cluster").urls, "cluster": True}
    url = await serve(**raw)
    async with aiohttp.ClientSession() as http:
        yield Api(http, url)


# -- the admin API ------------------------------------------------------------------------


async def test_create_list_show_update_and_revoke(api: Api) -> None:
    made = await api.create(
        name="ci", scopes=["chat"], agents=["echo"], limits={"requests_per_minute": 60}
    )
    key, key_id, record = made["key"], made["id"], made["record"]
    assert key.startswith(f"sk-agentd-{key_id}-") and len(key) >= 16 + 43
    assert record == {
        "id": key_id,
        "object": "api_key",
        "tenant": "acme",
        "name": "ci",
        "scopes": ["chat"],
        "agents": ["echo"],
        "limits": {"requests_per_minute": 60},
        "created_at": record["created_at"],
        "expires_at": None,
        "disabled": False,
    }
    assert key not in orjson.dumps(record).decode()
    other = await api.create(tenant="globex")
    assert other["record"]["scopes"] == ["chat", "responses", "sessions", "state"]

    assert await api.call("GET", f"{KEYS}/{key_id}") == (200, record)
    status, page = await api.call("GET", f"{KEYS}?tenant=acme")
    assert status == 200 and [r["id"] for r in page["data"]] == [key_id]
    assert sorted(r["id"] for r in await api.everything()) == sorted([key_id, other["id"]])
    status, page = await api.call("GET", f"{KEYS}?limit=1")
    assert status == 200 and len(page["data"]) == 1 and page["has_more"]
    status, rest = await api.call("GET", f"{KEYS}?limit=1&after={page['next_after']}")
    assert status == 200 and len(rest["data"]) == 1 and not rest["has_more"]

    assert (await api.chat(key))[0] == 200
    status, updated = await api.call(
        "PATCH", f"{KEYS}/{key_id}", {"name": "ci-2", "limits": {}, "agents": None}
    )
    assert status == 200
    assert updated == {**record, "name": "ci-2", "limits": {}, "agents": None}
    assert (await api.chat(key, model="other"))[0] == 200

    assert await api.call("DELETE", f"{KEYS}/{key_id}") == (
        200,
        {"id": key_id, "object": "api_key", "deleted": True},
    )
    status, body = await api.chat(key)
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    assert (await api.call("GET", f"{KEYS}/{key_id}"))[0] == 404
    assert [r["id"] for r in await api.everything()] == [other["id"]]


async def test_the_openai_sdk_works_with_a_key_until_it_is_revoked(api: Api) -> None:
    made = await api.create()
    client = openai.AsyncOpenAI(api_key=made["key"], base_url=api.url + "/v1", max_retries=0)
    try:
        reply = await client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "hello"}]
        )
        assert reply.choices[0].message.content == "hello"
        assert (await api.call("DELETE", f"{KEYS}/{made['id']}"))[0] == 200
        with pytest.raises(openai.AuthenticationError) as err:
            await client.chat.completions.create(
                model="echo", messages=[{"role": "user", "content": "hello"}]
            )
        assert err.value.status_code == 401
        assert err.value.code == "invalid_api_key"
    finally:
        await client.close()


async def test_a_key_needs_the_scope_and_the_agent_it_uses(api: Api) -> None:
    no_chat = await api.create(scopes=["sessions"])
    status, body = await api.chat(no_chat["key"])
    assert status == 403 and body["error"]["code"] == "permission_denied"
    status, _ = await api.call("GET", "/v1/sessions", headers=bearer(no_chat["key"]))
    assert status == 200
    one_agent = await api.create(agents=["echo"])
    assert (await api.chat(one_agent["key"], "echo"))[0] == 200
    status, body = await api.chat(one_agent["key"], "other")
    assert status == 403 and body["error"]["code"] == "permission_denied"
    # Keys never reach the admin API without the admin scope.
    status, body = await api.call("GET", KEYS, headers=bearer(one_agent["key"]))
    assert status == 403 and body["error"]["code"] == "permission_denied"


async def test_disabled_and_expired_keys_are_refused(api: Api) -> None:
    made = await api.create()
    assert (await api.call("PATCH", f"{KEYS}/{made['id']}", {"disabled": True}))[0] == 200
    status, body = await api.chat(made["key"])
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    assert "disabled" in body["error"]["message"]
    assert (await api.call("PATCH", f"{KEYS}/{made['id']}", {"disabled": False}))[0] == 200
    assert (await api.chat(made["key"]))[0] == 200

    soon = await api.create(expires_at=time.time() + 1.0)
    assert (await api.chat(soon["key"]))[0] == 200

    async def expired() -> bool:
        status, body = await api.chat(soon["key"])
        return status == 401 and "expired" in body["error"]["message"]

    await wait_until(expired, what="the key to expire")


async def test_a_wrong_secret_for_a_known_id_is_refused(api: Api) -> None:
    made = await api.create()
    forged = made["key"][:-43] + secrets.token_urlsafe(32)
    status, body = await api.chat(forged)
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    assert (await api.chat(made["key"]))[0] == 200


async def test_admin_keys_belong_to_the_operator_tenant_only(api: Api) -> None:
    status, body = await api.call("POST", KEYS, {"tenant": "acme", "scopes": ["admin"]})
    assert status == 400 and body["error"]["code"] == "admin_scope_not_allowed"
    operator = await api.create(tenant="", scopes=["admin"])
    minted = await api.call(
        "POST", KEYS, {"tenant": "globex", "scopes": ["chat"]}, headers=bearer(operator["key"])
    )
    assert minted[0] == 201
    tenant_key = minted[1]
    status, body = await api.call(
        "PATCH", f"{KEYS}/{tenant_key['id']}", {"scopes": ["chat", "admin"]}
    )
    assert status == 400 and body["error"]["code"] == "admin_scope_not_allowed"
    assert (await api.call("GET", f"{KEYS}/{tenant_key['id']}"))[1]["scopes"] == ["chat"]


# -- bad input: a clear 400 (or 404) with a stable code, and nothing written ----------------

FUTURE = 4_000_000_000

BAD_CREATES: list[tuple[Any, str]] = [
    (b"not json", "invalid_json"),
    ([], "invalid_type"),
    ({}, "missing_required_parameter"),
    ({"tenant": 7}, "invalid_type"),
    ({"tenant": "Acme"}, "invalid_tenant"),
    ({"tenant": "a" * 65}, "invalid_tenant"),
    ({"tenant": "acme", "colour": "red"}, "unknown_parameter"),
    ({"tenant": "acme", "name": 5}, "invalid_type"),
    ({"tenant": "acme", "name": "x" * 201}, "invalid_name"),
    ({"tenant": "acme", "scopes": "chat"}, "invalid_type"),
    ({"tenant": "acme", "scopes": ["chat", "root"]}, "unknown_scope"),
    ({"tenant": "acme", "agents": ["echo", "ghost"]}, "unknown_agent"),
    ({"tenant": "acme", "agents": "echo"}, "invalid_type"),
    ({"tenant": "acme", "limits": []}, "invalid_type"),
    ({"tenant": "acme", "limits": {"requests_per_minute": -1}}, "invalid_limit"),
    ({"tenant": "acme", "limits": {"requests_per_minute": 1.5}}, "invalid_limit"),
    ({"tenant": "acme", "limits": {"requests_per_minute": True}}, "invalid_limit"),
    ({"tenant": "acme", "limits": {"requests_per_minute": "5"}}, "invalid_limit"),
    ({"tenant": "acme", "limits": {"requests_per_hour": 5}}, "unknown_limit"),
    ({"tenant": "acme", "expires_at": 1000}, "invalid_expires_at"),
    ({"tenant": "acme", "expires_at": "tomorrow"}, "invalid_expires_at"),
    ({"tenant": "acme", "expires_at": True}, "invalid_expires_at"),
    ({"tenant": "acme", "scopes": ["admin"]}, "admin_scope_not_allowed"),
]

BAD_UPDATES: list[tuple[Any, str]] = [
    (b"{", "invalid_json"),
    ("disabled", "invalid_type"),
    ({"tenant": "other"}, "unknown_parameter"),
    ({"disabled": "yes"}, "invalid_type"),
    ({"name": None}, "invalid_type"),
    ({"scopes": ["chat", "everything"]}, "unknown_scope"),
    ({"agents": ["ghost"]}, "unknown_agent"),
    ({"limits": {"tokens_per_day": -5}}, "invalid_limit"),
    ({"limits": {"tokens_per_day": 10**16}}, "invalid_limit"),
    ({"expires_at": 5}, "invalid_expires_at"),
    # One bad field spoils the whole change: the good one is not written either.
    ({"name": "renamed", "scopes": ["bogus"]}, "unknown_scope"),
    ({"disabled": True, "expires_at": -1}, "invalid_expires_at"),
]


async def test_bad_input_to_every_admin_endpoint_is_refused_and_writes_nothing(
    api: Api,
) -> None:
    for body, code in BAD_CREATES:
        status, answer = await api.call("POST", KEYS, body)
        assert (status, answer["error"]["code"]) == (400, code), (body, answer)
    assert await api.everything() == []

    made = await api.create(name="kept", scopes=["chat"])
    before = made["record"]
    for body, code in BAD_UPDATES:
        status, answer = await api.call("PATCH", f"{KEYS}/{made['id']}", body)
        assert (status, answer["error"]["code"]) == (400, code), (body, answer)
    assert await api.call("GET", f"{KEYS}/{made['id']}") == (200, before)
    assert (await api.chat(made["key"]))[0] == 200

    for bad_id in ("0000000000000000", "nothex!", "x" * 300, "ABCDEF0123456789"):
        for method, body in (("GET", None), ("PATCH", {"name": "n"}), ("DELETE", None)):
            status, answer = await api.call(method, f"{KEYS}/{bad_id}", body)
            assert (status, answer["error"]["code"]) == (404, "key_not_found"), (method, bad_id)
    for query, code in (
        ("tenant=Bad!", "invalid_tenant"),
        ("limit=-1", "invalid_range"),
        ("limit=5000", "invalid_range"),
        ("after=zz", "invalid_cursor"),
    ):
        status, answer = await api.call("GET", f"{KEYS}?{query}")
        assert (status, answer["error"]["code"]) == (400, code), query
    assert await api.everything() == [before]


async def test_every_admin_action_is_one_audit_line_without_the_key(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agentd.audit")
    made = await api.create(tenant="globex")
    await api.call("PATCH", f"{KEYS}/{made['id']}", {"disabled": True})
    await api.call("POST", KEYS, {"tenant": "globex", "scopes": ["nope"]})
    await api.call("DELETE", f"{KEYS}/{made['id']}")
    lines = [r for r in caplog.records if r.name == "agentd.audit"]
    facts = [(r.who, r.action, r.key_id, r.tenant, r.outcome) for r in lines]  # type: ignore[attr-defined]
    assert facts == [
        ("admin", "key.create", made["id"], "globex", "ok"),
        ("admin", "key.update", made["id"], "globex", "ok"),
        ("admin", "key.create", "", "globex", "refused: unknown_scope"),
        ("admin", "key.revoke", made["id"], "globex", "ok"),
    ]
    secret = made["key"][len(f"sk-agentd-{made['id']}-") :]
    assert not any(secret in r.getMessage() or made["key"] in str(r.__dict__) for r in lines)


# -- the per-worker cache ------------------------------------------------------------------


def _record(key_id: str, secret: str) -> KeyRecord:
    return KeyRecord(id=key_id, tenant="acme", secret_hash=hash_secret(secret), scopes=("chat",))


async def test_a_new_key_is_hidden_by_the_negative_cache_no_longer_than_its_ttl() -> None:
    config = from_dict({"auth": {"mode": "keys", "negative_cache_s": 0.5}})
    store = open_store(config)
    await store.start()
    cache = KeyCache(store.keyring, config.auth)  # not following changes: the TTL alone
    key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    key = f"sk-agentd-{key_id}-{secret}"
    try:
        with pytest.raises(Unauthorized):
            await cache.identify(key)
        lookups = cache.lookups
        await store.keyring.create(_record(key_id, secret))
        found = await wait_until(lambda: _identifies(cache, key), what="the new key")
        assert found.tenant == "acme" and found.key_id == key_id
        assert cache.lookups == lookups + 1  # the negative entry saved every other look-up
        # With the change feed followed, a created id is found at once.
        other_id = secrets.token_hex(8)
        other = f"sk-agentd-{other_id}-{secret}"
        await cache.start()
        with pytest.raises(Unauthorized):
            await cache.identify(other)
        await store.keyring.create(_record(other_id, secret))
        await wait_until(lambda: _identifies(cache, other), limit=0.4, what="the pushed key")
    finally:
        await cache.close()
        await store.close()


async def _identifies(cache: KeyCache, key: str) -> Any:
    try:
        return await cache.identify(key)
    except Unauthorized:
        return None


def _hgetalls(server: RedisServer) -> int:
    stats = redis.Redis(port=server.port).info("commandstats")
    return int(stats.get("cmdstat_hgetall", {}).get("calls", 0))


async def test_a_flood_of_invalid_keys_is_not_a_flood_of_lookups(
    serve: Factory, redis_standalone: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTD_ADMIN_KEY", ADMIN_KEY)
    budget = 20
    url = await serve(
        auth={"mode": "keys", "negative_cache_s": 60.0, "key_lookups_per_s": budget},
        redis={"urls": [redis_standalone.url]},
    )
    async with aiohttp.ClientSession() as http:
        api = Api(http, url)
        made = await api.create()
        assert (await api.chat(made["key"]))[0] == 200

        async def flood(keys: Callable[[int], str], n: int) -> list[int]:
            results = await asyncio.gather(*(api.chat(keys(i)) for i in range(n)))
            return [status for status, _ in results]

        before = _hgetalls(redis_standalone)
        # Malformed keys cost nothing; a repeated well-formed one costs one look-up.
        assert set(await flood(lambda i: f"sk-wrong-{i}", 200)) == {401}
        wrong = f"sk-agentd-{'0' * 16}-{secrets.token_urlsafe(32)}"
        assert set(await flood(lambda i: wrong, 200)) == {401}
        assert _hgetalls(redis_standalone) - before <= 1
        # Made-up ids, each new: the budget bounds the look-ups, the rest are told to retry.
        started = time.monotonic()
        statuses = await flood(
            lambda i: f"sk-agentd-{secrets.token_hex(8)}-{secrets.token_urlsafe(32)}", 300
        )
        elapsed = time.monotonic() - started
        assert set(statuses) == {401, 503} and statuses.count(503) >= 300 - budget * (1 + elapsed)
        assert _hgetalls(redis_standalone) - before <= 1 + budget * (1 + elapsed)
        # A key this worker holds is served all along.
        assert (await api.chat(made["key"]))[0] == 200


async def test_without_the_change_feed_a_revoke_is_seen_within_the_key_cache_ttl() -> None:
    config = from_dict({"auth": {"mode": "keys", "key_cache_s": 0.3}})
    store = open_store(config)
    await store.start()
    cache = KeyCache(store.keyring, config.auth)  # not following changes: the TTL alone
    key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    key = f"sk-agentd-{key_id}-{secret}"
    try:
        await store.keyring.create(_record(key_id, secret))
        assert (await cache.identify(key)).key_id == key_id
        await store.keyring.delete(key_id)
        assert await _identifies(cache, key) is not None  # cached: no round trip
        started = time.monotonic()
        await wait_until(lambda: _identifies_not(cache, key), what="the revoke")
        assert time.monotonic() - started < 0.3 + 1.0
    finally:
        await store.close()


async def _identifies_not(cache: KeyCache, key: str) -> bool:
    return await _identifies(cache, key) is None


async def test_requests_with_the_same_uncached_key_share_one_lookup() -> None:
    config = from_dict({"auth": {"mode": "keys", "negative_cache_s": 0.0}})
    store = open_store(config)
    await store.start()
    cache = KeyCache(store.keyring, config.auth)
    key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    try:
        await store.keyring.create(_record(key_id, secret))
        found = await asyncio.gather(
            *(cache.identify(f"sk-agentd-{key_id}-{secret}") for _ in range(50))
        )
        assert {i.key_id for i in found} == {key_id} and cache.lookups == 1
        unknown = f"sk-agentd-{secrets.token_hex(8)}-{secret}"
        refused = await asyncio.gather(
            *(cache.identify(unknown) for _ in range(50)), return_exceptions=True
        )
        assert all(isinstance(r, Unauthorized) for r in refused) and cache.lookups == 2
    finally:
        await store.close()


async def test_a_websocket_closes_when_its_key_is_disabled_or_revoked(api: Api) -> None:
    """An open connection does not outlive its key: a disable or a revoke closes it with
    4003; a change to another key, or one that keeps this key valid, does not."""
    kept, disabled, revoked = await api.create(), await api.create(), await api.create()

    async def connect(made: dict[str, Any]) -> aiohttp.ClientWebSocketResponse:
        ws = await api.http.ws_connect(api.url + "/v1/ws", headers=bearer(made["key"]))
        await ws.send_str(orjson.dumps({"type": "hello"}).decode())
        assert orjson.loads((await ws.receive(timeout=30)).data)["type"] == "ready"
        return ws

    sockets = [await connect(made) for made in (kept, disabled, revoked)]
    patch = {"name": "renamed"}
    assert (await api.call("PATCH", f"{KEYS}/{kept['id']}", patch))[0] == 200
    assert (await api.call("PATCH", f"{KEYS}/{disabled['id']}", {"disabled": True}))[0] == 200
    assert (await api.call("DELETE", f"{KEYS}/{revoked['id']}"))[0] == 200
    for ws in sockets[1:]:
        closing = await ws.receive(timeout=30)
        assert closing.type == aiohttp.WSMsgType.CLOSE, closing
        assert (closing.data, closing.extra) == (4003, "credential revoked")
    # The renamed key's connection still serves a turn.
    ws = sockets[0]
    await ws.send_str(orjson.dumps({"type": "message", "id": 1, "content": "still here"}).decode())
    frames = []
    while not frames or frames[-1]["type"] not in ("done", "error"):
        frames.append(orjson.loads((await ws.receive(timeout=30)).data))
    assert frames[-1]["type"] == "done", frames
    for ws in sockets:
        await ws.close()


async def test_a_verified_key_is_known_again_only_with_its_exact_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Once a key matched its hash, the worker knows it again without hashing (a
    constant-time comparison with the secret that matched); any other secret under the
    same id, or a change to the key, goes through the hash and the store again."""
    import agentd.auth.keys as keys_module

    hashed = []

    def counting_hash(secret: str) -> str:
        hashed.append(secret)
        return hash_secret(secret)

    monkeypatch.setattr(keys_module, "hash_secret", counting_hash)
    config = from_dict({"auth": {"mode": "keys"}})
    store = open_store(config)
    await store.start()
    cache = KeyCache(store.keyring, config.auth)
    key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    key = f"sk-agentd-{key_id}-{secret}"
    try:
        await store.keyring.create(_record(key_id, secret))
        assert cache.known(key) is None  # never verified
        identity = await cache.identify(key)
        assert cache.known(key) is identity and await cache.identify(key) is identity
        assert hashed == [secret]  # one hash, then none
        for wrong in (
            f"sk-agentd-{key_id}-{secrets.token_urlsafe(32)}",
            f"sk-agentd-{key_id}-{'é' * 43}",  # not ASCII: no comparison error either
            key[:-1] + ("A" if key[-1] != "A" else "B"),
        ):
            assert cache.known(wrong) is None
            with pytest.raises(Unauthorized):
                await cache.identify(wrong)
        assert cache.known(key) is identity
        # Disabled: forgotten at once (the change feed's work, done here by hand), and
        # refused with its reason.
        await store.keyring.update(key_id, {"disabled": True})
        cache.forget(key_id)
        assert cache.known(key) is None
        with pytest.raises(Unauthorized, match="disabled"):
            await cache.identify(key)
        assert cache.known(key) is None
    finally:
        await store.close()
