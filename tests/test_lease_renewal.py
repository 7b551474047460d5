"""The turn lease's renewals against a real Redis: what they cost (renewals per second
per running turn, counted by Redis itself), and a turn whose lease another turn took
stops instead of running on beside it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis
from aiohttp.test_utils import TestServer

from agentd.agent import Agents, TurnRequest
from agentd.config import from_dict
from agentd.errors import Conflict
from agentd.server.app import create_app
from agentd.server.keys import AGENTS
from agentd.store.keys import turn_key

from .procs import RedisServer
from .waiting import wait_until

TURNS = 20
WINDOW_S = 3.0


@pytest.fixture
async def agents(redis_standalone: RedisServer) -> AsyncIterator[Agents]:
    """Agents on one Redis with the default lease and a slow echo (10 words a second)."""
    config = from_dict(
        {
            "redis": {"urls": [redis_standalone.url]},
            "cache": {"disk_path": ""},
            "backends": [{"name": "echo", "type": "echo", "tokens_per_s": 10.0}],
        }
    )
    server = TestServer(create_app(config), host="127.0.0.1")
    await server.start_server()
    yield server.app[AGENTS]
    await server.close()


def _evalsha_calls(url: str) -> int:
    with redis.Redis.from_url(url) as r:
        return int(r.info("commandstats")["cmdstat_evalsha"]["calls"])


def _say(sid: str, words: int) -> TurnRequest:
    return TurnRequest("echo", [{"role": "user", "content": " w" * words}], sid)


async def test_a_running_turn_renews_its_lease_three_times_per_lease(
    agents: Agents, redis_standalone: RedisServer
) -> None:
    lease_s = agents.leases._lease_s
    assert lease_s == 2.0  # the default
    sids = [(await agents.store.create_session()).id for _ in range(TURNS)]
    deadline = asyncio.get_running_loop().time() + 60
    turns = [asyncio.create_task(agents.run(_say(s, 80), deadline=deadline)) for s in sids]
    with redis.Redis.from_url(redis_standalone.url) as r:
        await wait_until(lambda: all(r.exists(turn_key(s)) for s in sids), what="every lease")
    # While the turns run, the only scripts Redis runs are their renewals.
    before, started = _evalsha_calls(redis_standalone.url), time.monotonic()
    await asyncio.sleep(WINDOW_S)  # a measurement over a span of time, not a wait
    renewals = _evalsha_calls(redis_standalone.url) - before
    span = time.monotonic() - started
    assert not any(t.done() for t in turns), "a turn ended inside the measurement"
    per_turn_s = renewals / TURNS / span
    print(f"\nturn lease {lease_s} s: {per_turn_s:.2f} renewals/s per running turn")
    # Every third of the lease, never more often; at least one each in the window.
    assert TURNS <= renewals <= TURNS * (span / (lease_s / 3) + 1)
    for turn in turns:
        turn.cancel()
    await asyncio.gather(*turns, return_exceptions=True)


async def test_a_turn_whose_lease_another_took_stops_at_its_next_chunk(
    agents: Agents, redis_standalone: RedisServer
) -> None:
    sid = (await agents.store.create_session()).id
    deadline = asyncio.get_running_loop().time() + 60
    started = time.monotonic()
    stalled = asyncio.create_task(agents.run(_say(sid, 300), deadline=deadline))  # 30 s
    with redis.Redis.from_url(redis_standalone.url) as r:
        await wait_until(lambda: r.exists(turn_key(sid)), what="the lease")
        # As if the holder had stalled past its lease and another turn took the session.
        r.delete(turn_key(sid))
    other = await agents.store.begin_turn(sid, 0, 30.0)
    assert other is not None
    with pytest.raises(Conflict) as lost:
        await stalled
    assert lost.value.code == "turn_lost"
    # Stopped at its first renewal after the take-over, long before its 30 s reply.
    assert time.monotonic() - started < 15
    await agents.store.end_turn(sid, other.token, [{"role": "user", "content": "mine"}])
    assert [m["content"] for m in await agents.store.history(sid)] == ["mine"]
