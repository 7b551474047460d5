"""Session events on every store topology: watching with replay and live delivery, no gap
and no duplicate, published events, through :class:`agentd.store.Store` only."""

from __future__ import annotations

import asyncio
import contextlib
from contextlib import aclosing

import pytest

from agentd.errors import NotFound
from agentd.store import Event, Store

from .store_helpers import (
    TIMEOUT,
    assert_nothing_pending,
    collect_messages,
    new_session,
    next_event,
    seqs,
    user,
)
from .waiting import wait_until


async def test_watch_replays_stored_messages(store: Store) -> None:
    sid = await new_session(store)
    appended = await store.append(sid, [user(f"m{i}") for i in range(1, 6)])
    async with aclosing(store.watch(sid, after=0)) as gen:
        got = await collect_messages(gen, sid, 5)
        assert got == appended
        await assert_nothing_pending(store, sid, gen)


async def test_watch_receives_live_messages(store: Store) -> None:
    sid = await new_session(store)
    appended = await store.append(sid, [user("first")])
    async with aclosing(store.watch(sid, after=0)) as gen:
        assert await collect_messages(gen, sid, 1) == appended  # now subscribed
        appended += await store.append(sid, [user("second")])
        appended += await store.append(sid, [user("third"), user("fourth")])
        assert await collect_messages(gen, sid, 4) == appended[1:]
        await assert_nothing_pending(store, sid, gen)


async def test_watch_after_seq_sends_only_later_messages(store: Store) -> None:
    sid = await new_session(store)
    appended = await store.append(sid, [user(f"m{i}") for i in range(1, 6)])
    async with aclosing(store.watch(sid, after=3)) as gen:
        first = await next_event(gen)
        assert first == Event(sid, "messages", tuple(appended[3:]))
        appended += await store.append(sid, [user("m6")])
        assert await collect_messages(gen, sid, 6) == appended[5:]
        await assert_nothing_pending(store, sid, gen)


async def test_watch_after_last_seq_waits_for_new_messages(store: Store) -> None:
    sid = await new_session(store, "m1", "m2")
    async with aclosing(store.watch(sid, after=2)) as gen:
        receive = asyncio.ensure_future(next_event(gen))
        try:
            # Nothing is due until a message is appended...
            done, _ = await asyncio.wait({receive}, timeout=0.2)
            assert not done
            appended = await store.append(sid, [user("m3")])
            # ...and then exactly that one, live or read back: after=2 means no gap.
            assert await asyncio.wait_for(receive, TIMEOUT) == Event(
                sid, "messages", tuple(appended)
            )
        finally:
            receive.cancel()
            with contextlib.suppress(BaseException):
                await receive


async def test_watch_mixes_replay_and_live_without_gaps_or_duplicates(store: Store) -> None:
    sid = await new_session(store)
    appended = await store.append(sid, [user(f"pre{i}") for i in range(5)])
    async with aclosing(store.watch(sid, after=0)) as gen:
        # The watcher subscribes while these appends race it: each message must arrive
        # once, whether it is read back from history or received live.
        reader = asyncio.create_task(collect_messages(gen, sid, 40))
        try:
            for i in range(15):
                appended += await store.append(sid, [user(f"live{i}")])
                await asyncio.sleep(0)
            for batch in await asyncio.gather(
                *(store.append(sid, [user(f"c{i}a"), user(f"c{i}b")]) for i in range(10))
            ):
                appended += batch
            got = await asyncio.wait_for(reader, TIMEOUT * 2)
        finally:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
        assert seqs(got) == list(range(1, 41))
        assert got == sorted(appended, key=lambda m: m["seq"])
        await assert_nothing_pending(store, sid, gen)


async def test_published_event_reaches_watcher(store: Store) -> None:
    sid = await new_session(store, "hello")
    async with aclosing(store.watch(sid, after=0)) as gen:
        await collect_messages(gen, sid, 1)
        await store.publish(sid, "typing", {"x": 1})
        event = await next_event(gen)
        assert event == Event(sid, "typing", data={"x": 1})
        assert event.messages == ()
        await store.publish(sid, "status", {"nested": {"ok": [True]}, "u": "ü"})
        assert await next_event(gen) == Event(
            sid, "status", data={"nested": {"ok": [True]}, "u": "ü"}
        )


async def test_published_event_stays_in_its_session(store: Store) -> None:
    sid = await new_session(store, "hello")
    other = await new_session(store, "other")
    async with aclosing(store.watch(sid, after=0)) as gen:
        await collect_messages(gen, sid, 1)
        await store.publish(other, "typing", {"who": "other"})
        await store.append(other, [user("not for this watcher")])
        await store.publish(sid, "typing", {"who": "mine"})
        assert await next_event(gen) == Event(sid, "typing", data={"who": "mine"})


async def test_deleting_the_session_ends_the_watch(store: Store) -> None:
    sid = await new_session(store, "hello")
    async with aclosing(store.watch(sid, after=0)) as gen:
        await collect_messages(gen, sid, 1)
        await store.delete_session(sid)
        event = await next_event(gen)
        assert (event.session_id, event.kind, event.messages) == (sid, "deleted", ())
        with pytest.raises(StopAsyncIteration):
            await next_event(gen)


async def test_two_watchers_both_receive_every_message(store: Store) -> None:
    sid = await new_session(store)
    appended = await store.append(sid, [user("m1")])
    async with (
        aclosing(store.watch(sid, after=0)) as one,
        aclosing(store.watch(sid, after=0)) as two,
    ):
        assert await collect_messages(one, sid, 1) == appended
        assert await collect_messages(two, sid, 1) == appended
        appended += await store.append(sid, [user("m2"), user("m3")])
        for i in range(4, 11):
            appended += await store.append(sid, [user(f"m{i}")])
        got_one, got_two = await asyncio.gather(
            collect_messages(one, sid, 10), collect_messages(two, sid, 10)
        )
        assert got_one == got_two == appended[1:]
        await store.publish(sid, "typing", {"x": 1})
        assert await next_event(one) == await next_event(two) == Event(sid, "typing", data={"x": 1})


async def test_closing_one_watcher_leaves_the_other(store: Store) -> None:
    sid = await new_session(store, "m1")
    async with aclosing(store.watch(sid, after=0)) as staying:
        await collect_messages(staying, sid, 1)
        async with aclosing(store.watch(sid, after=0)) as leaving:
            await collect_messages(leaving, sid, 1)
        await store.append(sid, [user("m2")])
        assert seqs(await collect_messages(staying, sid, 2)) == [2]


async def test_watch_of_unknown_session_is_not_found(store: Store) -> None:
    async with aclosing(store.watch("nobody", after=0)) as gen:
        with pytest.raises(NotFound) as info:
            await next_event(gen)
        assert info.value.code == "session_not_found"


async def test_poll_gives_live_messages_without_waiting_and_leaves_the_rest(
    store: Store,
) -> None:
    """What a WebSocket forwards with no task: events that arrived while the watch was
    stopped at its wait, as long as no history must be read for them."""
    sid = await new_session(store)
    events = await store.open_watch(sid, after=0)
    try:
        assert await events.next_ready() is None  # stopped where it would wait
        assert events.poll() == ([], False)
        appended = await store.append(sid, [user("one"), user("two")])
        appended += await store.append(sid, [user("three")])

        got: list[dict] = []

        def took_all() -> bool:
            ready, more = events.poll()
            assert not more
            got.extend(m for event in ready for m in event.messages)
            return len(got) >= 3

        await wait_until(took_all, TIMEOUT, "the messages")  # Redis delivers when it does
        assert got == appended
        assert events.poll() == ([], False)
        # A custom event is next_ready's to give: poll leaves it, and what follows.
        await store.publish(sid, "note", {"n": 1})
        later = await store.append(sid, [user("four")])
        await wait_until(lambda: events.poll()[1], TIMEOUT, "the custom event")
        assert events.poll() == ([], True)
        # asend waits for an event where next_ready may stop (None) first.
        note = await asyncio.wait_for(events.asend(None), TIMEOUT)
        assert note.kind == "note" and note.data == {"n": 1}
        four = await asyncio.wait_for(events.asend(None), TIMEOUT)
        assert four is not None and list(four.messages) == later
    finally:
        await events.aclose()


async def test_poll_leaves_a_gap_to_next_ready_which_reads_history(store: Store) -> None:
    sid = await new_session(store)
    events = await store.open_watch(sid, after=0)

    def queued() -> bool:
        return bool(events._queue)  # type: ignore[attr-defined]

    try:
        assert await events.next_ready() is None
        hidden = await store.append(sid, [user("unseen")])
        await wait_until(queued, TIMEOUT, "the event")
        events._queue.popleft()  # type: ignore[attr-defined]  # lost, as pub/sub can lose one
        later = await store.append(sid, [user("two")])
        await wait_until(queued, TIMEOUT, "the next event")
        assert events.poll() == ([], True)  # its seq is past the next one: history
        caught = await asyncio.wait_for(events.next_ready(), TIMEOUT)
        assert caught is not None and list(caught.messages) == hidden + later
    finally:
        await events.aclose()
