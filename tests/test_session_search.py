"""Searching sessions by agent (``Store.list_sessions(agent=…)``, ``GET
/v1/sessions?agent=NAME``) on every store topology: the agent's own index, newest activity
first, paged by cursor, per tenant, without the sessions that are gone."""

from __future__ import annotations

from typing import Any

import aiohttp
import redis.asyncio as aioredis

from agentd.config import Config
from agentd.errors import BadRequest
from agentd.store import Store

from .store_helpers import LONG, fails, store_with, user
from .test_session_listing import next_millisecond
from .waiting import wait_until


async def of_agent(store: Store, agent: str, limit: int = 1000) -> list[str]:
    """Every session id listed for ``agent``, page after page of ``limit``."""
    ids: list[str] = []
    after = None
    while True:
        page = await store.list_sessions(limit=limit, after=after, agent=agent)
        assert all(s.agent == agent for s in page.sessions), page
        ids += [s.id for s in page.sessions]
        if page.next_after is None:
            return ids
        after = page.next_after


async def made(store: Store, agent: str | None) -> str:
    sid = (await store.create_session(agent=agent)).id
    await next_millisecond()  # each session its own activity score: the order is known
    return sid


async def test_an_agents_sessions_newest_first(store: Store) -> None:
    a1, b1, a2, none, a3 = [await made(store, agent) for agent in ("a", "b", "a", None, "a")]
    assert await of_agent(store, "a") == [a3, a2, a1]
    assert await of_agent(store, "b") == [b1]
    assert await of_agent(store, "nobody") == []
    everyone = [s.id for s in (await store.list_sessions(limit=10)).sessions]
    assert everyone == [a3, none, a2, b1, a1]  # the unfiltered listing is unchanged
    await store.append(a1, [user("back again")])  # a write moves it to the head
    assert await of_agent(store, "a") == [a1, a3, a2]
    await next_millisecond()
    lease = await store.begin_turn(a2, 10, 30.0)
    assert lease is not None
    await store.end_turn(a2, lease.token, [user("q"), {"role": "assistant", "content": "a"}])
    assert await of_agent(store, "a") == [a2, a1, a3]
    top = (await store.list_sessions(limit=1, agent="a")).sessions[0]
    assert top.id == a2 and top.last_seq == 2 and top.agent == "a"


async def test_an_agents_pages_cover_each_session_once(store: Store) -> None:
    mine = {(await store.create_session(agent="pager")).id for _ in range(17)}
    for _ in range(5):
        await store.create_session(agent="other")
    for limit in (1, 4, 17, 100):
        ids = await of_agent(store, "pager", limit)
        assert len(ids) == len(set(ids)) == 17 and set(ids) == mine, limit


async def test_deleted_and_recreated_sessions_leave_their_agents_listing(store: Store) -> None:
    sid = (await store.create_session(agent="first")).id
    kept = (await store.create_session(agent="first")).id
    await store.delete_session(sid)
    assert await of_agent(store, "first") == [kept]
    # The same id again, for another agent: listed under that one only.
    await store.create_session(sid, agent="second")
    await store.append(sid, [user("hi")])
    assert await of_agent(store, "first") == [kept]
    assert await of_agent(store, "second") == [sid]


async def test_expired_sessions_leave_their_agents_listing(store_config: Config) -> None:
    async with store_with(store_config, sessions={"ttl": 1}) as store:
        fading = (await store.create_session(agent="fading")).id
        assert await of_agent(store, "fading") == [fading]

        async def gone() -> bool:
            return await of_agent(store, "fading") == []

        await wait_until(gone, LONG, "the expired session to leave its agent's listing")
        assert await agent_indexed(store_config, "fading") == set()


async def agent_indexed(config: Config, agent: str) -> set[str]:
    """The session ids in ``agent``'s index (the Redis sorted sets; the memory store
    drops an agent's list with its last session)."""
    found: set[str] = set()
    for url in config.redis.urls:
        client = aioredis.Redis.from_url(url)
        try:
            for key in await client.keys(f"agentd:sx:*:a:{agent}"):
                found |= {m.decode() for m in await client.zrange(key, 0, -1)}
        except Exception as exc:  # a cluster node answers MOVED for keys it lacks
            if "MOVED" not in str(exc):
                raise
        finally:
            await client.aclose()
    return found


async def test_an_agents_listing_is_the_tenants_own(store: Store) -> None:
    acme, globex = store.for_tenant("acme"), store.for_tenant("globex")
    mine = (await acme.create_session(agent="shared-name")).id
    theirs = (await globex.create_session(agent="shared-name")).id
    assert await of_agent(acme, "shared-name") == [mine]
    assert await of_agent(globex, "shared-name") == [theirs]
    assert await of_agent(store, "shared-name") == []


async def test_a_bad_agent_name_is_a_bad_request(store: Store) -> None:
    for agent in ("", "has space", "{tag}", "x" * 201, "-leading"):
        await fails(store.list_sessions(limit=5, agent=agent), BadRequest, "invalid_agent")


async def test_http_search_by_agent(serve: Any) -> None:
    url = await serve()
    async with aiohttp.ClientSession() as http:
        ids: dict[str, list[str]] = {"echo": [], "helper": []}
        for agent in ("echo", "helper", "echo", "echo"):
            async with http.post(f"{url}/v1/sessions", json={"agent": agent}) as r:
                assert r.status == 201
                ids[agent].append((await r.json())["id"])
        seen: list[str] = []
        after = ""
        while True:
            async with http.get(f"{url}/v1/sessions?agent=echo&limit=2{after}") as r:
                assert r.status == 200
                page = await r.json()
            assert {s["agent"] for s in page["data"]} == {"echo"}
            seen += [s["id"] for s in page["data"]]
            if not page["has_more"]:
                break
            after = f"&after={page['next_after']}"
        assert sorted(seen) == sorted(ids["echo"])
        for bad in ("has%20space", "", "%7Bx%7D"):
            async with http.get(f"{url}/v1/sessions?agent={bad}") as r:
                assert r.status == 400, bad
                assert (await r.json())["error"]["code"] == "invalid_agent", bad
