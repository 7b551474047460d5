"""What identities cost: the cache-hit chat turn with API keys and rate limits on, as a
ratio to the same turn with ``auth.mode = "none"``, both on one Redis, and the Redis
commands each authenticated request adds (``INFO commandstats``)."""

from __future__ import annotations

import json
import secrets
import socket
import urllib.request
from typing import Any

from .. import targets
from ..measure import Bench, Served
from .common import HIT_CHAT, Scenario, compare, have
from .common import run_seconds as _secs

__all__ = ("HTTP_CHAT_AUTH",)

ADMIN_KEY = "bench-admin-" + secrets.token_hex(16)
# Keys mode with every limit on, high enough never to refuse the load: the cost of
# checking them, not of being refused.
AUTH_CONFIG = """
[auth]
mode = "keys"
[auth.tenant_limits]
requests_per_minute = 1000000000
tokens_per_minute = 1000000000000
max_concurrent_turns = 100000
tokens_per_day = 1000000000000000
tokens_per_month = 1000000000000000
"""
KEY_LIMITS = {
    "requests_per_minute": 10**9,
    "tokens_per_minute": 10**12,
    "max_concurrent_turns": 100_000,
}


def _call(url: str, body: Any = None, key: str | None = None) -> tuple[int, Any, str]:
    """(status, JSON body, X-Cache) of one request."""
    data = None if body is None else (body if isinstance(body, str) else json.dumps(body))
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=data and data.encode(), headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read()), response.headers.get("X-Cache", "")


def _commandstats(port: int) -> dict[str, int]:
    """redis-server's calls per command (``INFO commandstats``, one bulk string reply)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"INFO commandstats\r\n")
        data = b""
        while b"\r\n" not in data or len(data) < _bulk_end(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    out: dict[str, int] = {}
    for line in data.decode(errors="replace").splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line.partition(":")
            calls = rest.split(",", 1)[0].partition("=")[2]
            out[name[len("cmdstat_") :]] = int(calls)
    return out


def _bulk_end(data: bytes) -> int:
    """Where a RESP bulk string ``$N\\r\\n…\\r\\n`` ends."""
    head, _, _ = data.partition(b"\r\n")
    return len(head) + 2 + int(head[1:]) + 2


def _warm(served: Served, key: str | None) -> str:
    url = served.target.url("/v1/chat/completions")
    state = ""
    for _ in range(8):
        status, _, state = _call(url, HIT_CHAT, key)
        if status == 200 and state == "hit-l1":
            break
    return state


def run_chat_auth(bench: Bench) -> None:
    s = bench.settings
    c = s.main_concurrency
    if not have("redis-server"):
        bench.record["status"] = "skipped"
        bench.record["reason"] = "redis-server is not installed"
        return
    figures = bench.record.setdefault("figures", {})
    with targets.redis(bench.workdir, s.server_cpus) as redis:
        open_target = targets.agentd(
            bench.workdir, s.server_cpus, redis_url=redis.url, name="agentd-open"
        )
        with bench.serve(open_target) as served:
            figures["x_cache_open"] = _warm(served, None)
            bench.http(served, "/v1/chat/completions", method="POST", body=HIT_CHAT, concurrency=c)
        keyed = targets.agentd(
            bench.workdir,
            s.server_cpus,
            redis_url=redis.url,
            extra_config=AUTH_CONFIG,
            env={"AGENTD_ADMIN_KEY": ADMIN_KEY},
        )
        with bench.serve(keyed) as served:
            status, created, _ = _call(
                served.target.url("/v1/admin/keys"),
                {"tenant": "bench", "name": "load", "limits": KEY_LIMITS},
                ADMIN_KEY,
            )
            if status != 201:
                raise RuntimeError(f"creating the benchmark's key answered {status}: {created}")
            key = created["key"]
            figures["x_cache_keys"] = _warm(served, key)
            before = _commandstats(redis.port)
            run = bench.http(
                served,
                "/v1/chat/completions",
                method="POST",
                body=HIT_CHAT,
                concurrency=c,
                headers={"Authorization": f"Bearer {key}"},
            )
            after = _commandstats(redis.port)
    calls = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    calls = {k: v for k, v in calls.items() if v > 0 and k != "info"}
    total = run.get("requests") or 0
    figures["redis_calls_during_keys_run"] = calls
    if total:
        # The warm-up's requests are counted too: an upper bound per measured request.
        figures["redis_calls_per_request"] = round(sum(calls.values()) / total, 3)
    compare(bench, baselines=("agentd-open",))


HTTP_CHAT_AUTH = Scenario(
    "http-chat-auth",
    "the cache-hit chat turn (1 worker, one Redis) with API keys and every rate limit on, "
    'against the same with auth.mode = "none"; and the Redis commands the keyed run made '
    "per request (INFO commandstats)",
    run_chat_auth,
    lambda s: _secs(s, 2, 2) + 2.0,
)
