"""The job queue and response records, on every store topology (real Redis servers)."""

from __future__ import annotations

import asyncio

import orjson

from agentd.store import Delivery, Store

LONG = 60.0


async def _take_all(store: Store, partition: str, shards: int, consumer: str) -> list[Delivery]:
    out: list[Delivery] = []
    for shard in range(shards):
        out += await store.jobs.take(partition, shard, consumer, 100, 0.05)
    return out


async def test_enqueue_take_ack(store: Store) -> None:
    jobs = store.jobs
    for i in range(6):
        assert await jobs.enqueue("p", i % 3, f"resp_{i}", 100)
    taken = await _take_all(store, "p", 3, "c1")
    assert sorted(d.job_id for d in taken) == [f"resp_{i}" for i in range(6)]
    # Delivered once: nothing new for another consumer.
    assert await _take_all(store, "p", 3, "c2") == []
    depth = await jobs.depth("p", 3)
    assert (depth.waiting, depth.running) == (0, 6)
    for d in taken:
        await jobs.ack(d)
    depth = await jobs.depth("p", 3)
    assert (depth.waiting, depth.running, depth.dead) == (0, 0, 0)


async def test_limit_and_depth(store: Store) -> None:
    jobs = store.jobs
    assert await jobs.enqueue("p", 0, "a", 2)
    assert await jobs.enqueue("p", 0, "b", 2)
    assert not await jobs.enqueue("p", 0, "c", 2)  # full
    depth = await jobs.depth("p", 1)
    assert depth.waiting == 2 and depth.oldest_s >= 0
    [first] = await jobs.take("p", 0, "c1", 1, 0.05)
    assert first.job_id == "a"  # FIFO
    depth = await jobs.depth("p", 1)
    assert (depth.waiting, depth.running) == (1, 1)
    # A running job still counts toward the limit until acknowledged.
    assert not await jobs.enqueue("p", 0, "c", 2)
    await jobs.ack(first)
    assert await jobs.enqueue("p", 0, "c", 2)


async def test_take_waits_for_a_job(store: Store) -> None:
    jobs = store.jobs
    await jobs.take("p", 0, "c1", 1, 0.01)  # the group exists from here on
    reader = asyncio.create_task(jobs.take("p", 0, "c1", 1, 1.0))
    await asyncio.sleep(0.05)
    assert await jobs.enqueue("p", 0, "late", 10)
    got = await reader
    # A blocked read sees the job at once (or the next read does, on a timeout).
    if not got:
        got = await jobs.take("p", 0, "c1", 1, 0.05)
    assert [d.job_id for d in got] == ["late"]


async def test_reclaim_only_after_the_lease(store: Store) -> None:
    jobs = store.jobs
    await jobs.enqueue("p", 0, "j", 10)
    [d] = await jobs.take("p", 0, "dead-worker", 1, 0.05)
    assert await jobs.reclaim("p", 0, "c2", LONG, 10) == []
    await asyncio.sleep(0.15)
    [again] = await jobs.reclaim("p", 0, "c2", 0.1, 10)
    assert (again.job_id, again.entry) == ("j", d.entry)
    # The old holder lost it: its renewal fails and cannot take it back.
    assert not await jobs.renew(d, "dead-worker")
    assert await jobs.renew(again, "c2")
    assert await jobs.reclaim("p", 0, "c3", 0.1, 10) == []  # just renewed
    await jobs.ack(again)
    assert (await jobs.depth("p", 1)).running == 0


async def test_retry_and_bury(store: Store) -> None:
    jobs = store.jobs
    await jobs.enqueue("p", 0, "j", 10)
    [d] = await jobs.take("p", 0, "c1", 1, 0.05)
    await jobs.retry(d)
    await jobs.retry(d)  # a second retry of the same delivery adds nothing
    [d2] = await jobs.take("p", 0, "c1", 10, 0.05)
    assert d2.job_id == "j" and d2.entry != d.entry
    await jobs.bury(d2, b"upstream failed")
    depth = await jobs.depth("p", 1)
    assert (depth.waiting, depth.running, depth.dead) == (0, 0, 1)


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
    await asyncio.sleep(2.1)
    assert await jobs.events("short", -1) == []
    record = await jobs.read("short")
    assert record is not None and record["seq"] == b"1"
