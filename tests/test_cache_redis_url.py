"""``[cache] redis_url``: the L2 cache on a Redis of its own (one that may evict), the
sessions and everything else on the store's. Real redis-servers, real ``agentd serve``
processes."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from agentd.config import ConfigError, from_dict

from .openai_stub import StubNode
from .procs import AgentdProcess, RedisServer, fresh_connections
from .waiting import wait_until

pytestmark = pytest.mark.slow

Start = Callable[..., AgentdProcess]


def _config(main: RedisServer, cache: RedisServer, stub_url: str) -> str:
    return f"""
[server]
workers = 2
shutdown_timeout = 5.0
[redis]
urls = ["{main.url}"]
[cache]
disk_path = ""
l1_max_staleness = 300.0
redis_url = "{cache.url}"
[[backends]]
name = "llm"
type = "openai"
urls = ["{stub_url}"]
[[agents]]
name = "bot"
backend = "llm"
"""


def _keys(server: RedisServer, pattern: str) -> list[bytes]:
    with redis.Redis(port=server.port) as client:
        return list(client.scan_iter(match=pattern))


def _entries(server: RedisServer) -> list[bytes]:
    """The L2 entries (not the single-flight lock and stream beside them)."""
    return [k for k in _keys(server, "agentd:c:*") if not k.endswith((b":flight", b":lock"))]


@pytest.fixture
def cache_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "cache")
    yield server
    server.close()


def test_cache_redis_url_needs_a_redis_store() -> None:
    with pytest.raises(ConfigError, match=r"cache\.redis_url: needs redis\.urls"):
        from_dict({"cache": {"redis_url": "redis://127.0.0.1:1"}})
    with pytest.raises(ConfigError, match=r"cache\.redis_url: must start with redis://"):
        from_dict({"redis": {"urls": ["redis://127.0.0.1:1"]}, "cache": {"redis_url": "x"}})


async def test_l2_lives_on_the_cache_redis_and_sessions_on_the_store(
    agentd_instance: Start, redis_standalone: RedisServer, cache_server: RedisServer
) -> None:
    main, cache = redis_standalone, cache_server
    counter = itertools.count(1)

    def numbered(body: dict[str, Any]) -> str:
        return f"reply {next(counter)}"

    async with StubNode(reply=numbered) as node:
        config = _config(main, cache, node.url)
        a = await asyncio.to_thread(agentd_instance, config)
        b = await asyncio.to_thread(agentd_instance, config)
        assert f"; L2 cache on {cache.url}" in a.log()  # the start-up line names it
        async with fresh_connections() as http:

            async def ask(proc: AgentdProcess, sid: str | None = None) -> tuple[str, str]:
                body: dict[str, Any] = {
                    "model": "bot",
                    "messages": [{"role": "user", "content": "q"}],
                    "temperature": 0,
                }
                if sid is not None:
                    body["session_id"] = sid
                async with http.post(proc.url + "/v1/chat/completions", json=body) as r:
                    assert r.status == 200, await r.text()
                    reply = orjson.loads(await r.read())
                    return r.headers["X-Cache"], reply["choices"][0]["message"]["content"]

            async with http.post(a.url + "/v1/sessions", json={}) as r:
                sid = orjson.loads(await r.read())["id"]
            assert await ask(a, sid) == ("miss", "reply 1")
            # The other instance finds the reply in the shared L2: the cache Redis.
            assert await ask(b) == ("hit-l2", "reply 1")
            assert len(_entries(cache)) == 1
            assert _keys(main, "agentd:c:*") == []
            assert _keys(main, f"agentd:s:{{{sid}}}:*") != []
            assert _keys(cache, "agentd:s:*") == []

            # A clear empties the cache Redis and reaches every worker's L1 through its
            # pub/sub.
            async with http.delete(a.url + "/v1/cache") as r:
                assert r.status == 200
            assert _entries(cache) == []

            async def cleared() -> bool:
                return (await ask(b))[1] != "reply 1"

            await wait_until(cleared, 60, "instance b to drop its cached reply")

            # The cache Redis down: every look-up is a miss, no request fails, and the
            # instance stays ready.
            cache.close()
            level, text = await ask(a, sid)
            assert level == "miss" and text not in ("reply 1", "reply 2")
            async with http.get(a.url + "/readyz") as r:
                assert r.status == 200
