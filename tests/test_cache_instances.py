"""The response cache across real ``agentd serve`` processes sharing one Redis."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from .openai_stub import Slow, StubNode
from .procs import AgentdProcess, RedisServer, fresh_connections
from .waiting import wait_until

pytestmark = pytest.mark.slow

Start = Callable[..., AgentdProcess]


def _config(redis: RedisServer, stub_url: str, disk: Path) -> str:
    return f"""
[server]
workers = 2
shutdown_timeout = 5.0
[redis]
urls = ["{redis.url}"]
[cache]
disk_path = "{disk}"
l1_max_staleness = 300.0
[[backends]]
name = "llm"
type = "openai"
urls = ["{stub_url}"]
[[agents]]
name = "bot"
backend = "llm"
"""


async def _ask(http: aiohttp.ClientSession, url: str, text: str) -> tuple[str, str]:
    body = {"model": "bot", "messages": [{"role": "user", "content": text}], "temperature": 0}
    async with http.post(url + "/v1/chat/completions", json=body) as r:
        assert r.status == 200, await r.text()
        reply = orjson.loads(await r.read())
        return r.headers["X-Cache"], reply["choices"][0]["message"]["content"]


async def test_a_herd_on_two_instances_costs_one_upstream_call(
    agentd_instance: Start, redis_standalone: RedisServer, tmp_path: Path
) -> None:
    async with StubNode(Slow(first_s=0.5, between_s=0.01)) as node:
        a = await asyncio.to_thread(
            agentd_instance, _config(redis_standalone, node.url, tmp_path / "a.sqlite")
        )
        b = await asyncio.to_thread(
            agentd_instance, _config(redis_standalone, node.url, tmp_path / "b.sqlite")
        )
        async with fresh_connections() as http:
            results = await asyncio.gather(
                *(_ask(http, (a, b)[i % 2].url, "herd") for i in range(40))
            )
    assert {text for _, text in results} == {"stub:herd"}
    assert len(node.requests) == 1


async def test_a_cache_clear_reaches_every_worker(
    agentd_instance: Start, redis_standalone: RedisServer, tmp_path: Path
) -> None:
    counter = itertools.count(1)

    def numbered(body: dict[str, Any]) -> str:
        return f"reply {next(counter)}"

    async with StubNode(reply=numbered) as node:
        proc = await asyncio.to_thread(
            agentd_instance, _config(redis_standalone, node.url, tmp_path / "l3.sqlite")
        )
        async with fresh_connections() as http:
            # Warm every worker's L1 with "reply 1".
            levels = set()
            for _ in range(40):
                level, text = await _ask(http, proc.url, "q")
                assert text == "reply 1"
                levels.add(level)
            assert "hit-l1" in levels
            async with http.delete(proc.url + "/v1/cache") as r:
                assert r.status == 200

            async def every_worker_cleared() -> bool:
                texts = {(await _ask(http, proc.url, "q"))[1] for _ in range(40)}
                assert texts <= {"reply 1", "reply 2"}, texts
                return texts == {"reply 2"}

            # The clear reaches every worker's L1 through Redis pub/sub, long before the
            # staleness bound (300 s here) could have cleared it.
            await wait_until(every_worker_cleared, 60, "no worker to answer from its old L1")
    assert len(node.requests) == 2
