"""Listing sessions (``Store.list_sessions``, ``GET /v1/sessions``) on every store
topology: newest activity first, paged by cursor, without the sessions that are gone."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from agentd.config import Config, from_dict
from agentd.errors import BadRequest
from agentd.store import Store
from agentd.store.memory import store as memory_store
from agentd.store.sessions import activity_ms

from .store_helpers import LONG, fails, new_session, store_with, user
from .waiting import wait_until


async def listed(store: Store, limit: int = 1000) -> list[str]:
    """Every listed session id, page after page of ``limit``."""
    ids: list[str] = []
    after = None
    while True:
        page = await store.list_sessions(limit=limit, after=after)
        ids += [s.id for s in page.sessions]
        if page.next_after is None:
            return ids
        after = page.next_after


async def next_millisecond() -> None:
    """Wait until the activity clock has moved on (so two writes get two scores)."""
    now = activity_ms()
    await wait_until(lambda: activity_ms() > now, what="the clock to tick")


async def test_newest_activity_first(store: Store) -> None:
    first = await new_session(store)
    await next_millisecond()
    second = await new_session(store)
    await next_millisecond()
    assert await listed(store) == [second, first]
    await store.append(first, [user("back again")])  # a write moves it to the head
    assert await listed(store) == [first, second]
    info = (await store.list_sessions(limit=1)).sessions[0]
    assert info.id == first and info.last_seq == 1


async def test_pages_cover_every_session_once(store: Store) -> None:
    made = {await new_session(store) for _ in range(23)}  # many share a millisecond
    for limit in (1, 4, 10, 23, 100):
        ids = await listed(store, limit)
        assert len(ids) == len(set(ids)) == 23 and set(ids) == made, limit
    page = await store.list_sessions(limit=23)
    assert page.next_after is None and len(page.sessions) == 23


async def test_a_turn_counts_as_activity(store: Store) -> None:
    sid = await new_session(store)
    await next_millisecond()
    other = await new_session(store)
    await next_millisecond()
    lease = await store.begin_turn(sid, 10, 30.0)
    assert lease is not None
    await store.end_turn(sid, lease.token, [user("q"), {"role": "assistant", "content": "a"}])
    assert (await listed(store))[:2] == [sid, other]


async def test_deleted_and_expired_sessions_are_not_listed(store_config: Config) -> None:
    async with store_with(store_config, sessions={"ttl": 1}) as store:
        doomed = await new_session(store)
        await store.delete_session(doomed)
        assert doomed not in await listed(store)
        fading = await new_session(store)

        async def gone() -> bool:
            return fading not in await listed(store)

        await wait_until(gone, LONG, "the expired session to leave the listing")
        assert await indexed(store_config, store) == set()


async def indexed(config: Config, store: Store) -> set[str]:
    """The session ids in the store's index (the Redis sorted sets, or the memory one)."""
    if not config.redis.urls:
        return set(store._activity)  # type: ignore[attr-defined]
    found: set[str] = set()
    for url in config.redis.urls:
        client = aioredis.Redis.from_url(url)
        try:
            for key in await client.keys("agentd:sx:*"):
                found |= {m.decode() for m in await client.zrange(key, 0, -1)}
        except Exception as exc:  # a cluster node answers MOVED for keys it lacks
            if "MOVED" not in str(exc):
                raise
        finally:
            await client.aclose()
    return found


async def test_bad_cursor_and_limit(store: Store) -> None:
    for after in ("x", "12", ":s_1", "12:", "1" * 17 + ":s", "12:{bad}"):
        await fails(store.list_sessions(limit=5, after=after), BadRequest, "invalid_cursor")
    for limit in (0, 1001):
        await fails(store.list_sessions(limit=limit), BadRequest, "invalid_range")


async def test_http_listing_pages(serve: Any) -> None:
    url = await serve()
    async with aiohttp.ClientSession() as http:
        made = []
        for _ in range(5):
            async with http.post(f"{url}/v1/sessions", json={}) as r:
                made.append((await r.json())["id"])
        seen: list[str] = []
        after = ""
        while True:
            async with http.get(f"{url}/v1/sessions?limit=2{after}") as r:
                assert r.status == 200
                page = await r.json()
            assert page["object"] == "list" and len(page["data"]) <= 2
            seen += [s["id"] for s in page["data"]]
            if not page["has_more"]:
                assert page["next_after"] is None
                break
            after = f"&after={page['next_after']}"
        assert sorted(seen) == sorted(made)
        async with http.get(f"{url}/v1/sessions?after=nonsense") as r:
            assert r.status == 400 and (await r.json())["error"]["code"] == "invalid_cursor"


async def test_sessions_written_again_and_again_are_listed_once_newest_first(
    store_config: Config, store: Store
) -> None:
    ids = [(await store.create_session(agent="echo")).id for _ in range(4)]
    for i in range(30):  # the last session is written only when made
        await store.append(ids[i % 3], [user(str(i))])
    for sid in ids[:3]:
        await next_millisecond()
        await store.append(sid, [user("last")])
    for agent in (None, "echo"):
        everyone: list[str] = []
        after = None
        while True:
            page = await store.list_sessions(limit=2, after=after, agent=agent)
            everyone += [s.id for s in page.sessions]
            if (after := page.next_after) is None:
                break
        assert len(everyone) == len(set(everyone)), everyone
        assert [s for s in everyone if s in ids] == [ids[2], ids[1], ids[0], ids[3]]
    if not store_config.redis.urls:  # the memory index holds one entry per session again
        assert len(store._index) == len(store._agents["echo"]) == 4  # type: ignore[attr-defined]


async def test_the_memory_listing_index_stays_bounded_however_many_writes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(memory_store, "STALE_SLACK", 8)
    async with store_with(from_dict({})) as store:
        sid = await new_session(store, "first")
        for i in range(30):  # each in a millisecond of its own: each leaves a stale entry
            await next_millisecond()
            await store.append(sid, [user(str(i))])
        assert len(store._index) <= 1 + 8 + 1  # type: ignore[attr-defined]
        assert await listed(store) == [sid]
        assert len(store._index) == 1  # type: ignore[attr-defined]
