"""Rate limits, quotas and usage in one process: the limiter over the memory store and
a real Redis, and the HTTP surface (headers, 429s, usage) of an app in keys mode."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis

from agentd.auth import ADMIN, OPEN, Identity
from agentd.auth.limits import Limiter
from agentd.config import LimitsConfig, from_dict
from agentd.errors import QuotaExceeded, RateLimited, StoreUnavailable
from agentd.metrics import TENANT_LABELS, Metrics, TenantMetrics
from agentd.store import Store, open_store
from agentd.store.keys import limit_keys

from .procs import RedisServer
from .waiting import wait_until

ADMIN_KEY = "sk-admin-limits-test-0123456789abcdef"
SLOW = {"name": "slow", "type": "echo", "latency_ms": 60_000}


def key_identity(key_id: str = "key1", tenant: str = "acme", **limits: int) -> Identity:
    return Identity(
        tenant=tenant,
        scopes=frozenset({"chat"}),
        kind="key",
        key_id=key_id,
        limits=LimitsConfig(**limits) if limits else None,
    )


def user(text: str = "hello there") -> dict[str, Any]:
    return {"model": "echo", "messages": [{"role": "user", "content": text}]}


# -- the limiter, with identities made here -----------------------------------------------


@pytest.fixture
async def memory_store() -> AsyncIterator[Store]:
    store = open_store(from_dict({}))
    await store.start()
    yield store
    await store.close()


async def _admit(limiter: Limiter, identity: Identity) -> bool:
    ticket = limiter.begin(identity)
    assert ticket is not None
    try:
        await ticket.admitted()
    except RateLimited:
        return False
    finally:
        ticket.settle(ran=False)
    return True


async def test_a_burst_is_admitted_exactly_n_times_in_one_process(memory_store: Store) -> None:
    limiter = Limiter(from_dict({}), memory_store.limits)
    identity = key_identity(requests_per_minute=25)
    admitted = await asyncio.gather(*(_admit(limiter, identity) for _ in range(80)))
    assert sum(admitted) == 25


async def test_tenant_limits_come_from_the_config(memory_store: Store) -> None:
    config = from_dict(
        {
            "auth": {
                "tenant_limits": {"requests_per_minute": 5},
                "tenants": [{"name": "big", "limits": {"requests_per_minute": 8}}],
            }
        }
    )
    limiter = Limiter(config, memory_store.limits)
    for tenant, n in (("small", 5), ("big", 8)):
        identity = key_identity(tenant=tenant)  # the key itself has no limits
        admitted = await asyncio.gather(*(_admit(limiter, identity) for _ in range(20)))
        assert sum(admitted) == n, tenant


async def test_open_and_admin_identities_are_not_limited(redis_standalone: RedisServer) -> None:
    config = from_dict(
        {
            "redis": {"urls": [redis_standalone.url]},
            "auth": {"tenant_limits": {"requests_per_minute": 1}},
        }
    )
    store = open_store(config)
    await store.start()
    try:
        limiter = Limiter(config, store.limits)
        with redis.Redis(port=redis_standalone.port) as client:
            before = command_calls(client)
            assert limiter.begin(OPEN) is None
            assert limiter.begin(ADMIN) is None
            assert command_calls(client) == before  # no Redis call at all
    finally:
        await store.close()


async def test_the_admissions_of_one_tick_go_to_redis_as_one_call(
    redis_standalone: RedisServer,
) -> None:
    config = from_dict({"redis": {"urls": [redis_standalone.url]}})
    store = open_store(config)
    await store.start()
    client = redis.Redis(port=redis_standalone.port)
    try:
        limiter = Limiter(config, store.limits)
        identity = key_identity(requests_per_minute=30, max_concurrent_turns=100)
        assert await _admit(limiter, identity)  # loads the script
        await limiter.close()
        before = script_calls(client)
        # Fifty requests begun in one tick: one call admits them in order.
        tickets = [limiter.begin(identity) for _ in range(50)]
        answers = await asyncio.gather(
            *(t.admitted() for t in tickets if t is not None), return_exceptions=True
        )
        assert script_calls(client) - before == 1
        admitted = [a for a in answers if not isinstance(a, BaseException)]
        assert len(admitted) == 29  # the limit, less the first request's place
        assert sorted(int(h["x-ratelimit-remaining-requests"]) for h in admitted) == list(range(29))
        assert all(isinstance(a, RateLimited) for a in answers if a not in admitted)
        # Their slots are freed together, in the next call, and their usage written with
        # the next flush of the sums.
        for ticket in tickets:
            assert ticket is not None
            ticket.settle(ran=False)
        await limiter.close()
        assert script_calls(client) - before <= 3
        assert client.zcard(limit_keys("acme", "k:key1")[2]) == 0
    finally:
        client.close()
        await store.close()


def script_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("evalsha", "eval"))


def command_calls(client: redis.Redis) -> int:
    """Every command the server ran but INFO (the reader's own)."""
    stats = client.info("commandstats")
    return sum(v["calls"] for k, v in stats.items() if k != "cmdstat_info")


async def test_a_refusal_says_when_to_retry(memory_store: Store) -> None:
    limiter = Limiter(from_dict({}), memory_store.limits)
    identity = key_identity(requests_per_minute=1)
    assert await _admit(limiter, identity)
    ticket = limiter.begin(identity)
    assert ticket is not None
    with pytest.raises(RateLimited) as refused:
        await ticket.admitted()
    assert refused.value.code == "rate_limit_exceeded"
    # A place frees once the first request's bucket (100 ms) has left the minute.
    assert refused.value.retry_after is not None and 1 <= refused.value.retry_after <= 61
    assert "requests per minute" in refused.value.message


async def test_a_spent_day_budget_is_insufficient_quota(memory_store: Store) -> None:
    limiter = Limiter(from_dict({}), memory_store.limits)
    identity = key_identity(tokens_per_day=10)
    ticket = limiter.begin(identity)
    assert ticket is not None
    await ticket.admitted()
    ticket.settle({"prompt_tokens": 6, "completion_tokens": 4}, "miss")
    await limiter.close()
    again = limiter.begin(identity)
    assert again is not None
    with pytest.raises(QuotaExceeded) as spent:
        await again.admitted()
    assert spent.value.status == 429 and spent.value.code == "insufficient_quota"


# -- the limits' Redis down: closed refuses, open admits --------------------------------


@pytest.mark.parametrize("policy", ["closed", "open"])
async def test_limits_unavailable(policy: str, tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    config = from_dict(
        {
            "redis": {"urls": [server.url]},
            "auth": {"limits_unavailable": policy, "tenant_limits": {"requests_per_minute": 100}},
        }
    )
    store = open_store(config)
    await store.start()
    try:
        limiter = Limiter(config, store.limits)
        identity = key_identity()
        assert await _admit(limiter, identity)
        server.stop()
        ticket = limiter.begin(identity)
        assert ticket is not None
        if policy == "closed":
            with pytest.raises(StoreUnavailable):
                await ticket.admitted()
        else:
            assert await ticket.admitted() == {}  # admitted, without limits or headers
        ticket.settle(ran=False)
        await limiter.close()
    finally:
        await store.close()
        server.close()


# -- over HTTP, in keys mode ------------------------------------------------------------


Start = Callable[..., Any]


@pytest.fixture
async def keyed(serve: Start, monkeypatch: pytest.MonkeyPatch) -> Start:
    """Start an app in keys mode (memory store) whose admin key is ADMIN_KEY."""
    monkeypatch.setenv("AGENTD_ADMIN_KEY", ADMIN_KEY)

    async def start(**raw: Any) -> str:
        auth = {"mode": "keys", **raw.pop("auth", {})}
        raw.setdefault("backends", [{"name": "echo", "type": "echo"}, SLOW])
        raw.setdefault("agents", [{"name": "echo"}, {"name": "slow", "backend": "slow"}])
        return str(await serve(auth=auth, **raw))

    return start


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def new_key(
    http: aiohttp.ClientSession, base: str, tenant: str = "acme", **limits: int
) -> tuple[str, str]:
    """A new key of ``tenant`` with ``limits``: (key, id)."""
    body: dict[str, Any] = {"tenant": tenant}
    if limits:
        body["limits"] = limits
    async with http.post(f"{base}/v1/admin/keys", json=body, headers=bearer(ADMIN_KEY)) as r:
        assert r.status == 201, await r.text()
        made = await r.json()
    return made["key"], made["id"]


async def chat(
    http: aiohttp.ClientSession, base: str, key: str, body: dict[str, Any] | None = None
) -> tuple[int, dict[str, str], Any]:
    async with http.post(
        f"{base}/v1/chat/completions", json=body or user(), headers=bearer(key)
    ) as r:
        return r.status, dict(r.headers), await r.json(content_type=None)


async def test_replies_carry_openai_ratelimit_headers(keyed: Start) -> None:
    base = await keyed()
    async with aiohttp.ClientSession() as http:
        key, _ = await new_key(http, base, requests_per_minute=10, tokens_per_minute=1000)
        status, headers, _ = await chat(http, base, key)
        assert status == 200
        assert headers["x-ratelimit-limit-requests"] == "10"
        assert headers["x-ratelimit-remaining-requests"] == "9"
        # The request's bucket (100 ms) leaves the window 60 to 60.1 s from now.
        assert re.fullmatch(r"1m0(\.\d{1,3})?s", headers["x-ratelimit-reset-requests"])
        assert headers["x-ratelimit-limit-tokens"] == "1000"
        assert int(headers["x-ratelimit-remaining-tokens"]) <= 1000
        assert "x-ratelimit-reset-tokens" in headers
        # Streamed: the headers go with the first chunk.
        async with http.post(
            f"{base}/v1/chat/completions", json={**user(), "stream": True}, headers=bearer(key)
        ) as r:
            assert r.status == 200
            assert r.headers["x-ratelimit-remaining-requests"] == "8"
            await r.read()
        # A key with no limits gets no such headers.
        free, _ = await new_key(http, base, tenant="free")
        status, headers, _ = await chat(http, base, free)
        assert status == 200 and "x-ratelimit-limit-requests" not in headers


async def test_over_the_limit_is_429_with_retry_after(keyed: Start) -> None:
    base = await keyed(auth={"tenants": [{"name": "acme", "limits": {"requests_per_minute": 3}}]})
    async with aiohttp.ClientSession() as http:
        key, _ = await new_key(http, base)
        replies = await asyncio.gather(*(chat(http, base, key) for _ in range(6)))
        statuses = sorted(status for status, _, _ in replies)
        assert statuses == [200, 200, 200, 429, 429, 429]
        refused = [(h, b) for s, h, b in replies if s == 429]
        for headers, body in refused:
            assert body["error"]["code"] == "rate_limit_exceeded"
            assert body["error"]["type"] == "rate_limit_error"
            assert 1 <= int(headers["Retry-After"]) <= 61
        # Another tenant is not affected.
        other, _ = await new_key(http, base, tenant="other")
        assert (await chat(http, base, other))[0] == 200
        async with http.get(f"{base}/metrics") as r:
            text = await r.text()
        assert 'agentd_tenant_requests_total{outcome="admitted",tenant="acme"} 3.0' in text
        assert 'agentd_tenant_requests_total{outcome="rate_limited",tenant="acme"} 3.0' in text


async def test_tokens_per_minute_are_charged_from_the_usage(keyed: Start) -> None:
    base = await keyed()
    async with aiohttp.ClientSession() as http:
        key, _ = await new_key(http, base, tokens_per_minute=20)
        long = user("word " * 40)  # the echo's usage: ~50 prompt and 40 completion tokens
        status, _, body = await chat(http, base, key, long)
        assert status == 200 and body["usage"]["total_tokens"] > 20

        async def refused() -> Any:
            status, _, body = await chat(http, base, key)
            return body if status == 429 else None

        body = await wait_until(refused, what="the token bucket to be spent")
        assert body["error"]["code"] == "rate_limit_exceeded"
        assert "tokens per minute" in body["error"]["message"]


async def test_a_spent_day_budget_over_http(keyed: Start) -> None:
    base = await keyed()
    async with aiohttp.ClientSession() as http:
        key, _ = await new_key(http, base, tokens_per_day=5)
        assert (await chat(http, base, key))[0] == 200

        async def spent() -> Any:
            status, headers, body = await chat(http, base, key)
            return (headers, body) if status == 429 else None

        headers, body = await wait_until(spent, what="the day's budget to be spent")
        assert body["error"]["code"] == "insufficient_quota"
        assert int(headers["Retry-After"]) <= 86400


async def test_turn_slots_are_released_on_success_error_and_cancel(keyed: Start) -> None:
    base = await keyed()
    async with aiohttp.ClientSession() as http:
        key, _ = await new_key(http, base, max_concurrent_turns=1)
        # Success: one after the other, each gets the slot.
        for _ in range(3):
            assert (await chat(http, base, key))[0] == 200
        # Error: a turn on a session that does not exist fails after its admission.
        for _ in range(3):
            missing = {**user(), "session_id": "no-such-session"}
            assert (await chat(http, base, key, missing))[0] == 404
        assert (await chat(http, base, key))[0] == 200
        # Cancel: a slow turn holds the slot until its client goes away. Probe only once
        # it is admitted (a probe first would take the slot).
        admitted = await _admitted(http, base)
        slow = asyncio.ensure_future(chat(http, base, key, {**user(), "model": "slow"}))
        await wait_until(
            lambda: _admitted(http, base, admitted + 1), what="the slow turn to be admitted"
        )
        status, _, body = await chat(http, base, key)
        assert status == 429 and "turns at once" in body["error"]["message"]
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow

        async def free() -> bool:
            return (await chat(http, base, key))[0] == 200

        await wait_until(free, what="the cancelled turn's slot to be released")


async def _admitted(http: aiohttp.ClientSession, base: str, expect: float | None = None) -> Any:
    """acme's admitted requests in /metrics; with ``expect``: whether it is that."""
    async with http.get(f"{base}/metrics") as r:
        text = await r.text()
    sample = 'agentd_tenant_requests_total{outcome="admitted",tenant="acme"} '
    lines = [line for line in text.splitlines() if line.startswith(sample)]
    value = float(lines[0][len(sample) :]) if lines else 0.0
    return value if expect is None else value == expect


async def test_usage_by_day_and_key(keyed: Start) -> None:
    base = await keyed()
    async with aiohttp.ClientSession() as http:
        one, one_id = await new_key(http, base)
        two, two_id = await new_key(http, base)
        other, _ = await new_key(http, base, tenant="other")
        for key in (one, one, two, other):
            assert (await chat(http, base, key))[0] == 200

        async def counted() -> Any:
            async with http.get(f"{base}/v1/usage", headers=bearer(one)) as r:
                assert r.status == 200
                found = await r.json()
            return found if found["totals"]["requests"] == 3 else None

        usage = await wait_until(counted, what="the usage to be counted")
        assert usage["tenant"] == "acme"
        assert usage["totals"]["prompt_tokens"] > 0 and usage["totals"]["completion_tokens"] > 0
        [today] = usage["days"]
        assert today["keys"][one_id]["requests"] == 2
        assert today["keys"][two_id]["requests"] == 1
        # The admin's view: every tenant, or one.
        async with http.get(f"{base}/v1/admin/usage", headers=bearer(ADMIN_KEY)) as r:
            assert r.status == 200
            tenants = {t["tenant"]: t["totals"]["requests"] for t in (await r.json())["data"]}
        assert tenants == {"acme": 3, "other": 1}
        url = f"{base}/v1/admin/usage?tenant=other&days=30"
        async with http.get(url, headers=bearer(ADMIN_KEY)) as r:
            [only] = (await r.json())["data"]
        assert only["tenant"] == "other" and only["totals"]["requests"] == 1
        # A tenant's key may not see the admin's view; bad ranges are 400s.
        async with http.get(f"{base}/v1/admin/usage", headers=bearer(one)) as r:
            assert r.status == 403
        for bad in ("days=0", "days=367", "days=x"):
            async with http.get(f"{base}/v1/usage?{bad}", headers=bearer(one)) as r:
                assert r.status == 400
                assert (await r.json())["error"]["code"] == "invalid_range"
        async with http.get(f"{base}/v1/admin/usage?tenant=A!", headers=bearer(ADMIN_KEY)) as r:
            assert r.status == 400


@pytest.mark.parametrize("policy", ["closed", "open"])
async def test_limits_unavailable_over_http(policy: str, keyed: Start, tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    try:
        base = await keyed(
            redis={"urls": [server.url]},
            # The key's record stays cached: only the limits need Redis.
            auth={"limits_unavailable": policy, "key_cache_s": 3600},
        )
        async with aiohttp.ClientSession() as http:
            key, _ = await new_key(http, base, requests_per_minute=100)
            assert (await chat(http, base, key))[0] == 200
            server.stop()
            status, headers, body = await chat(http, base, key)
            if policy == "closed":
                assert status == 503 and body["error"]["code"] == "store_unavailable"
            else:
                assert status == 200 and "x-ratelimit-limit-requests" not in headers
    finally:
        server.close()


async def _frame(ws: aiohttp.ClientWebSocketResponse, *types: str) -> dict[str, Any]:
    """The next frame of one of ``types`` (deltas and events are passed over)."""
    while True:
        frame: dict[str, Any] = await asyncio.wait_for(ws.receive_json(), 10)
        if frame["type"] in types:
            return frame


async def test_websocket_turns_count_against_the_limits(keyed: Start) -> None:
    base = await keyed()
    async with aiohttp.ClientSession() as http:
        key, _ = await new_key(http, base, requests_per_minute=2)
        async with http.ws_connect(f"{base}/v1/ws", headers=bearer(key)) as ws:
            for n in range(3):
                await ws.send_json({"type": "message", "id": f"m{n}", "content": "hi there"})
                frame = await _frame(ws, "done", "error")
                if n < 2:
                    assert frame["type"] == "done", frame
                else:
                    assert frame["type"] == "error" and frame["id"] == "m2"
                    assert frame["code"] == "rate_limit_exceeded"
                    assert 1 <= frame["retry_after"] <= 61


async def test_responses_count_against_the_limits_and_background_ones_are_charged(
    keyed: Start,
) -> None:
    base = await keyed()
    async with aiohttp.ClientSession() as http:
        streamed, _ = await new_key(http, base, tenant="other", requests_per_minute=5)
        body = {"model": "echo", "input": "hello there"}
        stream = {**body, "stream": True}
        async with http.post(f"{base}/v1/responses", json=stream, headers=bearer(streamed)) as r:
            assert r.status == 200
            assert r.headers["x-ratelimit-remaining-requests"] == "4"
            await r.read()
        key, key_id = await new_key(http, base, requests_per_minute=1)
        url = f"{base}/v1/responses"
        async with http.post(url, json=body, headers=bearer(key)) as r:
            assert r.status == 200, await r.text()
            assert r.headers["x-ratelimit-limit-requests"] == "1"
            assert r.headers["x-ratelimit-remaining-requests"] == "0"
        async with http.post(url, json=body, headers=bearer(key)) as r:
            assert r.status == 429
            assert (await r.json())["error"]["code"] == "rate_limit_exceeded"
        # A background response is not refused when it is queued; it is charged when it
        # runs, to its key's usage and its tenant's limits.
        async with http.post(url, json={**body, "background": True}, headers=bearer(key)) as r:
            assert r.status == 200, await r.text()

        async def charged() -> Any:
            async with http.get(f"{base}/v1/usage", headers=bearer(key)) as r:
                usage = await r.json()
            return usage if usage["totals"]["requests"] == 2 else None

        usage = await wait_until(charged, what="the background response to be charged")
        assert usage["days"][0]["keys"][key_id]["requests"] == 2


async def test_a_background_response_is_charged_to_its_keys_limits(keyed: Start) -> None:
    base = await keyed()
    async with aiohttp.ClientSession() as http:
        key, _ = await new_key(http, base, requests_per_minute=2)
        url = f"{base}/v1/responses"
        body = {"model": "echo", "input": "hello there"}
        async with http.post(url, json=body, headers=bearer(key)) as r:
            assert r.status == 200
        # Queued without a check; when it runs, it takes the key's second place.
        async with http.post(url, json={**body, "background": True}, headers=bearer(key)) as r:
            assert r.status == 200
            rid = (await r.json())["id"]

        async def done() -> bool:
            async with http.get(f"{url}/{rid}", headers=bearer(key)) as r:
                return (await r.json())["status"] == "completed"

        await wait_until(done, what="the background response to run")

        async def charged() -> bool:
            async with http.get(f"{base}/v1/usage", headers=bearer(key)) as r:
                return bool((await r.json())["totals"]["requests"] == 2)

        # Charged a few ms after it ends, in the same write as its usage.
        await wait_until(charged, what="the background response to be charged")
        async with http.post(url, json=body, headers=bearer(key)) as r:
            assert r.status == 429
            error = (await r.json())["error"]
        assert "this API key's requests per minute" in error["message"]


async def test_completions_and_embeddings_count_against_the_limits(keyed: Start) -> None:
    base = await keyed()
    async with aiohttp.ClientSession() as http:
        key, _ = await new_key(http, base, requests_per_minute=2)
        calls = [
            ("/v1/completions", {"model": "echo", "prompt": "hello there"}),
            ("/v1/embeddings", {"model": "echo", "input": "hello there"}),
            ("/v1/completions", {"model": "echo", "prompt": "hello there"}),
        ]
        statuses = []
        for path, body in calls:
            async with http.post(base + path, json=body, headers=bearer(key)) as r:
                statuses.append(r.status)
                if r.status == 200:
                    assert r.headers["x-ratelimit-limit-requests"] == "2"
        assert statuses == [200, 200, 429]


def test_tenant_labels_are_bounded() -> None:
    metrics = TenantMetrics(Metrics(), named=("vip",))
    labels = [metrics.label(f"t{i}") for i in range(TENANT_LABELS + 10)]
    assert labels[:TENANT_LABELS] == [f"t{i}" for i in range(TENANT_LABELS)]
    assert set(labels[TENANT_LABELS:]) == {"other"}
    assert metrics.label("t0") == "t0"  # a tenant keeps the label it got
    assert metrics.label("vip") == "vip"  # tenants named in the config always have theirs


async def test_a_running_turn_renews_its_slot(
    memory_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    import agentd.auth.limits as limits_module

    monkeypatch.setattr(limits_module, "SLOT_LEASE_MS", 300)
    monkeypatch.setattr(limits_module, "RENEW_S", 0.1)
    limiter = Limiter(from_dict({}), memory_store.limits)
    identity = key_identity(max_concurrent_turns=1)
    running = limiter.begin(identity)
    assert running is not None
    await running.admitted()
    # Past three leases: only the renewals keep the slot taken.
    await asyncio.sleep(1.0)
    assert not await _admit(limiter, identity)
    running.settle(ran=False)
    await limiter.close()
    assert await _admit(limiter, identity)
