"""Watchers of one session in one worker share one subscription: on every store topology,
fifty watchers hold one, each gets every event in order, the last to leave ends it, and
one that stops reading does not hold up the others (it falls back to history)."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from agentd.config import Config, from_dict
from agentd.store import Event, Store, Watch, open_store
from agentd.store.api import MAX_BACKLOG
from agentd.store.keys import session_channel

from .procs import RedisServer
from .store_helpers import TIMEOUT, collect_messages, new_session, store_with, user
from .waiting import wait_until

WATCHERS = 50


async def _messages_until(watch: Watch, sid: str, until_seq: int) -> list[dict]:
    async def events():  # Watch is an async iterator: read it as the store's users do
        while True:
            yield await watch.asend(None)

    return await collect_messages(events(), sid, until_seq)


async def test_fifty_watchers_of_a_session_share_one_subscription(store: Store) -> None:
    sid = await new_session(store, "m1")
    other = await new_session(store)
    assert store.watch_counts() == (0, 0)
    watches = await asyncio.gather(*(store.open_watch(sid, after=0) for _ in range(WATCHERS)))
    lone = await store.open_watch(other)
    try:
        assert store.watch_counts() == (2, WATCHERS + 1)
        appended = await store.history(sid)
        for i in range(2, 12):
            appended += await store.append(sid, [user(f"m{i}")])
        await store.publish(sid, "typing", {"n": 1})
        got = await asyncio.gather(*(_messages_until(w, sid, 11) for w in watches))
        assert all(g == appended for g in got)
        typing = Event(sid, "typing", data={"n": 1})
        assert [await asyncio.wait_for(w.asend(None), TIMEOUT) for w in watches] == [
            typing
        ] * WATCHERS
        # Leaving one at a time: the subscription stays until the last one goes.
        for w in watches[:-1]:
            await w.aclose()
        assert store.watch_counts() == (2, 2)
        appended += await store.append(sid, [user("m12")])
        assert await _messages_until(watches[-1], sid, 12) == appended[-1:]
        await watches[-1].aclose()
        assert store.watch_counts() == (1, 1)
    finally:
        for w in (*watches, lone):
            await w.aclose()
    assert store.watch_counts() == (0, 0)


async def test_a_watcher_that_stops_reading_does_not_hold_up_the_others(
    store_config: Config,
) -> None:
    count = MAX_BACKLOG + 50  # more events than a watcher may fall behind
    async with store_with(store_config, sessions={"max_messages": 2 * count}) as store:
        sid = await new_session(store, "m0")
        slow = await store.open_watch(sid, after=0)
        fast = [await store.open_watch(sid, after=0) for _ in range(3)]
        try:
            assert len(await _messages_until(slow, sid, 1)) == 1  # live, then stops reading
            readers = [asyncio.create_task(_messages_until(w, sid, count + 1)) for w in fast]
            appended = await store.history(sid)
            for i in range(1, count + 1):
                appended += await store.append(sid, [user(f"m{i}")])
            got = await asyncio.wait_for(asyncio.gather(*readers), TIMEOUT * 6)
            assert all(g == appended for g in got)
            # The slow one dropped what overflowed and reads it back from history: every
            # message once, in order.
            assert await _messages_until(slow, sid, count + 1) == appended[1:]
            assert store.watch_counts() == (1, 4)
        finally:
            for w in (slow, *fast):
                await w.aclose()


async def test_one_redis_subscription_for_fifty_watchers(redis_standalone: RedisServer) -> None:
    store = open_store(from_dict({"redis": {"urls": [redis_standalone.url]}}))
    await store.start()
    admin = aioredis.Redis(port=redis_standalone.port)
    try:
        sid = await new_session(store, "m1")
        channel = session_channel(sid)

        async def numsub() -> int:
            return dict(await admin.pubsub_numsub(channel))[channel.encode()]

        async def subscribers() -> list[dict]:
            clients = await admin.client_list()
            return [c for c in clients if int(c.get("sub", 0)) or int(c.get("ssub", 0) or 0)]

        watches = await asyncio.gather(*(store.open_watch(sid, after=0) for _ in range(WATCHERS)))
        assert await numsub() == 1
        (client,) = await subscribers()
        assert client["sub"] == "1"  # one channel on one connection
        assert store.watch_counts() == (1, WATCHERS)
        appended = await store.history(sid)
        appended += await store.append(sid, [user("m2"), user("m3")])
        got = await asyncio.gather(*(_messages_until(w, sid, 3) for w in watches))
        assert all(g == appended for g in got)
        for w in watches:
            await w.aclose()

        async def unsubscribed() -> bool:
            return await numsub() == 0

        await wait_until(unsubscribed, what="the channel unsubscribed")
        assert store.watch_counts() == (0, 0)
    finally:
        await admin.aclose()
        await store.close()
