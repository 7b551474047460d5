"""A Redis at its ``maxmemory`` with ``noeviction`` (the policy docs/operations.md asks
for) refuses writes: agentd answers them 503 ``store_full``, not a 500, serves reads, and
stays ready. A real redis-server and a real ``agentd serve``."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .procs import AgentdProcess, RedisServer, http_json

pytestmark = pytest.mark.slow

Start = Callable[..., AgentdProcess]


@pytest.fixture
def small_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path, "--maxmemory", "4mb", "--maxmemory-policy", "noeviction")
    yield server
    server.close()


def _send(proc: AgentdProcess, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(proc.url + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_full_redis_refuses_writes_with_503_store_full(
    small_redis: RedisServer, agentd_instance: Start
) -> None:
    proc = agentd_instance(f'[server]\nworkers = 1\n[redis]\nurls = ["{small_redis.url}"]\n')
    status, session = _send(proc, "POST", "/v1/sessions", {})
    assert status == 201
    sid = session["id"]
    batch = {"messages": [{"role": "user", "content": "x" * 10_000}] * 10}
    # 4 MB fill up within a few hundred 100 KB appends; the bound only ends a broken run.
    for _ in range(1000):
        status, answer = _send(proc, "POST", f"/v1/sessions/{sid}/messages", batch)
        if status != 201:
            break
    assert status == 503, answer
    assert answer["error"]["code"] == "store_full"
    assert "maxmemory" in answer["error"]["message"]
    # Reads go on, the worker lives, the instance is ready (the server answers).
    assert _send(proc, "GET", f"/v1/sessions/{sid}")[0] == 200
    assert http_json(proc.url + "/readyz")[0] == 200
    assert "unhandled error" not in proc.log()
