"""API keys across real ``agentd serve`` processes sharing one Redis: a change made
through one instance reaches every worker of another within the documented bound, and
the ``agentd keys`` command drives a running server."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import pytest

from .chat_helpers import chat_body
from .procs import ROOT, AgentdProcess, RedisServer, fresh_connections
from .waiting import wait_until

pytestmark = pytest.mark.slow

Start = Callable[..., AgentdProcess]

ADMIN_KEY = "sk-admin-" + "b" * 40
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
# The bound docs/auth.md promises for a revoke or an update to reach every worker.
BOUND_S = 2.0
# Requests per check, over fresh connections: enough to reach each of the two workers.
SPREAD = 16


def _config(redis: RedisServer, key_cache_s: float = 60.0, admin_env: str = "") -> str:
    # A key cache far longer than the bound: only the pushed change can meet it.
    admin = f'admin_key_env = "{admin_env}"\n' if admin_env else ""
    return f"""
[server]
workers = 2
[redis]
urls = ["{redis.url}"]
[auth]
mode = "keys"
key_cache_s = {key_cache_s}
{admin}"""


async def _statuses(url: str, key: str) -> set[int]:
    async with fresh_connections() as http:

        async def one() -> int:
            headers = {"Authorization": f"Bearer {key}"}
            async with http.post(
                url + "/v1/chat/completions", json=chat_body(), headers=headers
            ) as r:
                await r.read()
                return r.status

        return set(await asyncio.gather(*(one() for _ in range(SPREAD))))


async def _admin(
    http: aiohttp.ClientSession, method: str, url: str, body: Any = None
) -> tuple[int, Any]:
    async with http.request(method, url, json=body, headers=ADMIN) as r:
        return r.status, orjson.loads(await r.read())


async def _seen_within_bound(url: str, key: str, status: int) -> float:
    """Seconds until every request to ``url`` with ``key`` answers ``status``."""
    started = time.monotonic()

    async def seen() -> bool:
        return await _statuses(url, key) == {status}

    await wait_until(seen, what=f"every worker to answer {status}")
    return time.monotonic() - started


async def test_an_update_and_a_revoke_reach_every_worker_of_another_instance(
    agentd_instance: Start, redis_standalone: RedisServer
) -> None:
    env = {"AGENTD_ADMIN_KEY": ADMIN_KEY}
    a = await asyncio.to_thread(agentd_instance, _config(redis_standalone), env=env)
    b = await asyncio.to_thread(agentd_instance, _config(redis_standalone), env=env)
    async with aiohttp.ClientSession() as http:
        status, made = await _admin(http, "POST", a.url + "/v1/admin/keys", {"tenant": "acme"})
        assert status == 201, made
        key, item = made["key"], f"{a.url}/v1/admin/keys/{made['id']}"
        # Every worker of B reads the record and caches it (for key_cache_s = 60 s).
        assert await _statuses(b.url, key) == {200}

        assert (await _admin(http, "PATCH", item, {"disabled": True}))[0] == 200
        assert await _seen_within_bound(b.url, key, 401) < BOUND_S
        assert (await _admin(http, "PATCH", item, {"disabled": False}))[0] == 200
        assert await _seen_within_bound(b.url, key, 200) < BOUND_S

        assert (await _admin(http, "DELETE", item))[0] == 200
        assert await _seen_within_bound(b.url, key, 401) < BOUND_S
        assert await _statuses(a.url, key) == {401}


def _keys(url: str, *args: str, env: dict[str, str]) -> tuple[int, Any, str]:
    """Run ``agentd keys ...``: (exit code, the JSON it printed, what it wrote on stderr)."""
    cmd = [sys.executable, "-m", "agentd", "keys", "--url", url, *args]
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    full_env.pop("AGENTD_ADMIN_KEY", None)
    full_env.update(env)
    done = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=60)
    printed = json.loads(done.stdout) if done.stdout.strip() else None
    return done.returncode, printed, done.stderr


async def test_the_keys_command_drives_a_running_server(
    agentd_instance: Start, redis_standalone: RedisServer
) -> None:
    env = {"OPS_ADMIN": ADMIN_KEY}
    server = await asyncio.to_thread(
        agentd_instance, _config(redis_standalone, 2.0, admin_env="OPS_ADMIN"), env=env
    )
    config = str(server.config_path)

    def keys(*args: str) -> tuple[int, Any, str]:
        return _keys(server.url, "-c", config, *args, env=env)

    code, made, _ = await asyncio.to_thread(
        keys, "create", "--tenant", "acme", "--name", "ci", "--scopes", "chat",
        "--limit", "requests_per_minute=30",
    )  # fmt: skip
    assert code == 0 and made["record"]["limits"] == {"requests_per_minute": 30}
    key_id = made["id"]
    assert await _statuses(server.url, made["key"]) == {200}

    code, listed, _ = await asyncio.to_thread(keys, "list", "--tenant", "acme")
    assert code == 0 and [r["id"] for r in listed["data"]] == [key_id]
    code, shown, _ = await asyncio.to_thread(keys, "show", key_id)
    assert code == 0 and shown == made["record"]

    code, updated, _ = await asyncio.to_thread(
        keys, "update", key_id, "--disable", "--no-limits", "--name", "ci-off"
    )
    assert code == 0 and updated["disabled"] and updated["limits"] == {}
    assert updated["name"] == "ci-off"
    assert await _statuses(server.url, made["key"]) == {401}

    code, gone, _ = await asyncio.to_thread(keys, "revoke", key_id)
    assert code == 0 and gone["deleted"]
    code, _, err = await asyncio.to_thread(keys, "show", key_id)
    assert code == 1 and json.loads(err)["error"]["code"] == "key_not_found"

    # Bad input is the server's 400, printed; the wrong variable finds no key at all.
    code, _, err = await asyncio.to_thread(keys, "create", "--tenant", "acme", "--scopes", "x")
    assert code == 1 and json.loads(err)["error"]["code"] == "unknown_scope"
    code, _, err = await asyncio.to_thread(
        _keys, server.url, "--admin-key-env", "NOT_SET", "list", env={}
    )
    assert code == 1 and "NOT_SET" in err
    code, listed, _ = await asyncio.to_thread(keys, "list")
    assert code == 0 and listed["data"] == []
