"""The job queue (:class:`agentd.store.Queue`), on every store topology."""

from __future__ import annotations

import asyncio
import time

from agentd.store import Delivery, Store

from .store_helpers import LONG
from .waiting import wait_until

# A lease short enough to wait out in a test, long enough that two consecutive calls
# never take it on a slow machine.
LEASE_S = 0.5
# Slack for an age read from an entry id: whole milliseconds, rounded down.
ID_SLACK_S = 0.01


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
    assert (await jobs.depth("p", 1)).waiting == 2
    [first] = await jobs.take("p", 0, "c1", 1, 0.05)
    assert first.job_id == "a"  # FIFO
    depth = await jobs.depth("p", 1)
    assert (depth.waiting, depth.running) == (1, 1)
    # A running job still counts toward the limit until acknowledged.
    assert not await jobs.enqueue("p", 0, "c", 2)
    await jobs.ack(first)
    assert await jobs.enqueue("p", 0, "c", 2)


async def test_depth_tells_the_age_of_the_oldest_waiting_job(store: Store) -> None:
    jobs = store.jobs
    assert (await jobs.depth("p", 2)).oldest_s == 0  # nothing waits
    before_a = time.time()
    assert await jobs.enqueue("p", 0, "a", 10)
    depth = await jobs.depth("p", 2)
    assert 0 <= depth.oldest_s <= time.time() - before_a + ID_SLACK_S
    # The age grows while the job waits.
    await wait_until(lambda: _oldest_at_least(store, 0.2), limit=LONG, what="an age of 0.2 s")
    before_b = time.time()
    assert await jobs.enqueue("p", 1, "b", 10)
    # Once "a" runs, the oldest waiting job is "b", younger by at least 0.2 s.
    [running] = await jobs.take("p", 0, "c1", 1, 0.05)
    assert running.job_id == "a"
    depth = await jobs.depth("p", 2)
    assert depth.waiting == 1
    assert 0 <= depth.oldest_s <= time.time() - before_b + ID_SLACK_S
    [other] = await jobs.take("p", 1, "c1", 1, 0.05)
    assert (await jobs.depth("p", 2)).oldest_s == 0  # both run: nothing waits
    await jobs.ack(running)
    await jobs.ack(other)


async def _oldest_at_least(store: Store, age_s: float) -> bool:
    return (await store.jobs.depth("p", 2)).oldest_s >= age_s


async def test_take_waits_for_a_job(store: Store) -> None:
    jobs = store.jobs
    await jobs.take("p", 0, "c1", 1, 0.01)  # the group exists from here on
    reader = asyncio.create_task(jobs.take("p", 0, "c1", 1, 1.0))
    # A moment for the read to start waiting; nothing below depends on it having begun.
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
    [again] = await wait_until(
        lambda: jobs.reclaim("p", 0, "c2", LEASE_S, 10), LONG, "the lease to run out"
    )
    assert (again.job_id, again.entry) == ("j", d.entry)
    # The old holder lost it: its renewal fails and cannot take it back.
    assert not await jobs.renew(d, "dead-worker")
    assert await jobs.renew(again, "c2")
    assert await jobs.reclaim("p", 0, "c3", LEASE_S, 10) == []  # just renewed
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


async def test_reclaim_reaches_a_dead_workers_job_behind_many_running_ones(
    store: Store,
) -> None:
    """Each reclaim looks further along the pending jobs than the last: a dead worker's
    job queued behind many running ones (renewed by their live holder) is reclaimed even
    while new jobs keep arriving, and a reclaim takes only as many as it may."""
    jobs = store.jobs
    ahead = 25  # running jobs queued before the dead worker's: over 10 per job reclaimed
    for i in range(ahead):
        await jobs.enqueue("p", 0, f"running-{i}", 1000)
    await jobs.enqueue("p", 0, "orphan", 1000)
    live = await jobs.take("p", 0, "live-worker", ahead, 0.05)
    [orphan] = await jobs.take("p", 0, "dead-worker", 1, 0.05)
    assert len(live) == ahead and orphan.job_id == "orphan"
    arrived = 0

    async def one_round() -> list[Delivery]:
        """What the live worker and new arrivals do meanwhile, then one reclaim of one job."""
        nonlocal arrived
        for d in live:
            assert await jobs.renew(d, "live-worker")
        await jobs.enqueue("p", 0, f"new-{arrived}", 1000)
        arrived += 1
        live.extend(await jobs.take("p", 0, "live-worker", 1, 0.05))
        return await jobs.reclaim("p", 0, "other-worker", LEASE_S, 1)

    [again] = await wait_until(one_round, LONG, "the dead worker's job to be reclaimed")
    assert (again.job_id, again.entry) == ("orphan", orphan.entry)
    assert await jobs.renew(again, "other-worker")
    assert len(live) == ahead + arrived  # every new job was taken, none reclaimed
    for d in live:  # all still held by the live worker
        assert await jobs.renew(d, "live-worker")
