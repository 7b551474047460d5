"""Rate limits across real ``agentd serve`` processes sharing one Redis: exact under a
burst spread over three instances, turn slots back after ``kill -9`` of the worker
holding them, and the limiter's round trips counted by the server itself."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import pytest
import redis

from agentd.auth.limits import SLOT_LEASE_MS

from .chat_helpers import chat_body
from .procs import AgentdProcess, RedisServer, fresh_connections, metric
from .waiting import wait_until

pytestmark = pytest.mark.slow

Start = Callable[..., AgentdProcess]

ADMIN_KEY = "sk-admin-" + "c" * 40
ENV = {"AGENTD_ADMIN_KEY": ADMIN_KEY}
ADMITTED = 'agentd_tenant_requests_total{outcome="admitted",tenant="acme"}'


def _config(redis_server: RedisServer, workers: int = 2) -> str:
    return f"""
[server]
workers = {workers}
[redis]
urls = ["{redis_server.url}"]
[auth]
mode = "keys"
[[backends]]
name = "echo"
type = "echo"
[[backends]]
name = "slow"
type = "echo"
latency_ms = 120000
[[agents]]
name = "echo"
[[agents]]
name = "slow"
backend = "slow"
"""


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _new_key(url: str, **limits: int) -> str:
    async with aiohttp.ClientSession() as http:
        body = {"tenant": "acme", "limits": limits}
        async with http.post(f"{url}/v1/admin/keys", json=body, headers=bearer(ADMIN_KEY)) as r:
            assert r.status == 201, await r.text()
            made: dict[str, Any] = orjson.loads(await r.read())
    return str(made["key"])


async def _chat(http: aiohttp.ClientSession, url: str, key: str, model: str = "echo") -> int:
    body = chat_body(model=model)
    async with http.post(f"{url}/v1/chat/completions", json=body, headers=bearer(key)) as r:
        await r.read()
        return r.status


async def test_a_burst_over_three_instances_admits_exactly_the_limit(
    agentd_instance: Start, redis_standalone: RedisServer
) -> None:
    limit = 40
    instances = [agentd_instance(_config(redis_standalone), env=ENV) for _ in range(3)]
    key = await _new_key(instances[0].url, requests_per_minute=limit)
    async with fresh_connections() as http:
        # Three times the limit at once, spread over every worker of every instance.
        statuses = await asyncio.gather(
            *(_chat(http, instances[i % 3].url, key) for i in range(3 * limit))
        )
    assert set(statuses) <= {200, 429}, statuses
    admitted = statuses.count(200)
    # The issue asks for ±5%; the sliding log is exact.
    assert admitted == limit, f"{admitted} admitted of a limit of {limit}"


async def test_a_killed_workers_turn_slot_comes_back_within_its_lease(
    agentd_instance: Start, redis_standalone: RedisServer
) -> None:
    holder = agentd_instance(_config(redis_standalone, workers=1), env=ENV)
    prober = agentd_instance(_config(redis_standalone), env=ENV)
    key = await _new_key(holder.url, max_concurrent_turns=1)
    async with aiohttp.ClientSession() as http:
        slow = asyncio.ensure_future(_chat(http, holder.url, key, model="slow"))
        # Probe only once the slow turn holds the slot (a probe first would take it).
        await wait_until(lambda: metric(holder, ADMITTED) == 1, what="the slow turn to be admitted")
        assert await _chat(http, prober.url, key) == 429
        [worker] = holder.worker_pids()
        os.kill(worker, signal.SIGKILL)
        with pytest.raises(aiohttp.ClientError):
            await slow

        async def admitted() -> bool:
            return await _chat(http, prober.url, key) == 200

        # The lease ends SLOT_LEASE_MS after its last renewal: well within the wait.
        await wait_until(admitted, limit=SLOT_LEASE_MS / 1000 * 3, what="the slot's lease to end")


def _script_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(stats.get(name, {}).get("calls", 0) for name in ("cmdstat_evalsha", "cmdstat_eval"))


# What the limiter's script and the service registry's heartbeat run inside (Redis counts
# those too), INFO, SCAN and HGET (this test's own) and the job queue's idle reads (its
# readers wait on their streams all along).
_NOT_ROUND_TRIPS = {
    f"cmdstat_{name}"
    for name in (
        "evalsha", "eval", "info", "scan", "hget", "xreadgroup", "time", "zadd", "zrem",
        "zremrangebyscore", "zrangebyscore", "zcard", "hmget", "hset", "hincrby", "hdel",
        "del", "expire", "pexpire",
    )
}  # fmt: skip


def _other_calls(client: redis.Redis) -> dict[str, int]:
    """The calls of every command sent on its own (not inside a script)."""
    stats = client.info("commandstats")
    return {k: v["calls"] for k, v in stats.items() if k not in _NOT_ROUND_TRIPS}


async def test_the_limiter_costs_at_most_one_round_trip_per_request(
    agentd_instance: Start, redis_standalone: RedisServer
) -> None:
    proc = agentd_instance(_config(redis_standalone, workers=1), env=ENV)
    key = await _new_key(proc.url, requests_per_minute=1000, tokens_per_minute=10**6)
    client = redis.Redis(port=redis_standalone.port)
    try:
        async with aiohttp.ClientSession() as http:
            # The first request also reads the key's record and loads the script.
            assert await _chat(http, proc.url, key) == 200
            await wait_until(lambda: _script_calls(client) >= 2, what="the usage to be written")
            before = _script_calls(client)
            others_before = _other_calls(client)
            requests = 25
            for _ in range(requests):
                assert await _chat(http, proc.url, key) == 200
            await wait_until(lambda: _usage(client) >= requests + 1, what="every usage")
            # One admission per request (one after the other: one per tick), and the
            # usage written a few times for all of them together; nothing else: a
            # stateless turn touches no other key.
            calls = _script_calls(client) - before
            assert requests < calls < 2 * requests, calls
            others = _other_calls(client)
            grown = {k: n - others_before.get(k, 0) for k, n in others.items()}
            assert {k: n for k, n in grown.items() if n} == {}, "other commands were sent"
    finally:
        client.close()


def _usage(client: redis.Redis) -> int:
    """acme's requests counted today (any day: the test runs in one or two)."""
    found = 0
    for key in client.scan_iter(match="agentd:l:{acme}:u:*"):
        found += int(client.hget(key, "requests") or 0)
    return found
