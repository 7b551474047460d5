"""Response records (:class:`agentd.store.Records`), on every store topology."""

from __future__ import annotations

import asyncio

import orjson

from agentd.store import Store

from .store_helpers import LONG
from .waiting import wait_until


async def test_record_attempts_are_fenced(store: Store) -> None:
    jobs = store.jobs
    await jobs.create("resp_x", {"status": b"queued", "req": b"{}"}, 60)
    first = await jobs.start("resp_x", 3, "c")
    assert (first.verdict, first.attempt, first.seq) == ("run", 1, 0)
    assert await jobs.emit("resp_x", 1, [(0, b'{"n":0}'), (1, b'{"n":1}')])
    second = await jobs.start("resp_x", 3, "c")  # reclaimed: attempt 2 owns it now
    assert (second.verdict, second.attempt, second.seq) == ("run", 2, 2)
    assert not await jobs.emit("resp_x", 1, [(2, b'{"late":1}')])
    assert not await jobs.update("resp_x", 1, {"error": b"late"})
    assert not await jobs.finish("resp_x", 1, {"status": b"completed"}, [])
    assert await jobs.emit("resp_x", 2, [(2, b'{"n":2}')])
    assert await jobs.finish("resp_x", 2, {"status": b"completed"}, [(3, b'{"n":3}')])
    # Ended: no second finish, and start says so.
    assert not await jobs.finish("resp_x", 2, {"status": b"failed"}, [])
    assert await jobs.start("resp_x", 3, "c") == type(first)("done", status="completed")
    record = await jobs.read("resp_x")
    assert record is not None and record["status"] == b"completed" and record["seq"] == b"4"
    events = [orjson.loads(e) for e in await jobs.events("resp_x", -1)]
    assert events == [{"n": 0}, {"n": 1}, {"n": 2}, {"n": 3}]
    assert [orjson.loads(e) for e in await jobs.events("resp_x", 1)] == [{"n": 2}, {"n": 3}]


async def test_record_created_with_its_first_events(store: Store) -> None:
    jobs = store.jobs
    await jobs.create("r", {"status": b"queued", "req": b"{}"}, 60, [(0, b"[0]"), (1, b"[1]")])
    assert await jobs.events("r", -1) == [b"[0]", b"[1]"]
    start = await jobs.start("r", 3, "worker-1")
    assert (start.verdict, start.attempt, start.seq) == ("run", 1, 2)
    assert start.record["req"] == b"{}" and start.record["by"] == b"worker-1"
    assert start.record["status"] == b"in_progress"


async def test_record_attempts_run_out(store: Store) -> None:
    jobs = store.jobs
    await jobs.create("r", {"status": b"queued"}, 60)
    assert (await jobs.start("r", 2, "c")).verdict == "run"
    assert (await jobs.start("r", 2, "c")).verdict == "run"
    out = await jobs.start("r", 2, "c")
    assert (out.verdict, out.attempt) == ("exhausted", 2)
    assert (await jobs.start("missing", 2, "c")).verdict == "gone"


async def test_cancel_before_and_while_running(store: Store) -> None:
    jobs = store.jobs
    await jobs.create("q", {"status": b"queued"}, 60)
    assert not await jobs.cancel_asked("q")
    assert await jobs.cancel("q") == "queued"
    assert await jobs.cancel_asked("q")
    assert await jobs.cancel_asked("nothing")  # gone: stop too
    out = await jobs.start("q", 3, "c")
    assert (out.verdict, out.attempt) == ("cancel", 0)
    assert await jobs.finish("q", 0, {"status": b"cancelled"}, [])
    assert await jobs.cancel("q") == "cancelled"  # idempotent, stays ended
    record = await jobs.read("q")
    assert record is not None and record["status"] == b"cancelled"
    assert await jobs.cancel("nothing") is None


async def test_live_events_and_delete(store: Store) -> None:
    jobs = store.jobs
    await jobs.create("live", {"status": b"queued"}, 60)
    feed = await jobs.subscribe("live")
    try:
        start = await jobs.start("live", 1, "c")
        await jobs.emit("live", start.attempt, [(0, b'{"a":1}')])
        assert await asyncio.wait_for(feed.get(), 5) == b'{"a":1}'
        assert await jobs.delete("live")
        assert await asyncio.wait_for(feed.get(), 5) == b"deleted"
    finally:
        await feed.close()
    assert await jobs.read("live") is None
    assert await jobs.events("live", -1) == []
    assert not await jobs.delete("live")


async def test_events_expire_before_the_record(store: Store) -> None:
    jobs = store.jobs
    jobs.events_ttl_s = 1  # type: ignore[attr-defined]
    await jobs.create("short", {"status": b"queued"}, 60, [(0, b"[0]")])
    assert await jobs.events("short", -1) == [b"[0]"]
    await wait_until(lambda: _no_events(store, "short"), limit=LONG, what="the events to expire")
    record = await jobs.read("short")
    assert record is not None and record["seq"] == b"1"


async def _no_events(store: Store, rid: str) -> bool:
    return await store.jobs.events(rid, -1) == []
