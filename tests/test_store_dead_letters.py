"""Dead letters as operators handle them (:class:`agentd.store.dead.DeadLetters`) and the
retries counter of the queue figures, on every store topology."""

from __future__ import annotations

import pytest

from agentd.store import Store

MAX_ATTEMPTS = 2


async def _bury(store: Store, partition: str, job_id: str, error: bytes, attempts: int) -> None:
    jobs = store.jobs
    assert await jobs.enqueue(partition, 0, job_id, 100)
    [delivery] = await jobs.take(partition, 0, "c1", 1, 0.05)
    await jobs.bury(delivery, error, attempts)


async def test_dead_letters_page_newest_first_and_are_taken_once(store: Store) -> None:
    for i in range(5):
        await _bury(store, "p", f"resp_{i}", b'{"code": "boom", "message": "m%d"}' % i, i + 1)
    await _bury(store, "other", "resp_x", b"{}", 1)
    jobs = store.jobs
    first = await jobs.dead_letters("p", limit=2, after=None)
    assert [d.job_id for d in first.letters] == ["resp_4", "resp_3"]
    assert [d.attempts for d in first.letters] == [5, 4]
    assert first.next_after == first.letters[-1].id
    second = await jobs.dead_letters("p", limit=2, after=first.next_after)
    assert [d.job_id for d in second.letters] == ["resp_2", "resp_1"]
    last = await jobs.dead_letters("p", limit=2, after=second.next_after)
    assert [d.job_id for d in last.letters] == ["resp_0"] and last.next_after is None
    exact = await jobs.dead_letters("p", limit=5, after=None)
    assert len(exact.letters) == 5 and exact.next_after is None
    oldest = exact.letters[-1]
    assert oldest.error == b'{"code": "boom", "message": "m0"}'
    assert oldest.partition == "p" and oldest.failed_at > 0

    taken = await jobs.take_dead("p", oldest.id)
    assert taken == oldest
    assert await jobs.take_dead("p", oldest.id) is None  # once only
    # Ids are a partition's own (two partitions may hold the same one): taking one in a
    # partition leaves the others alone.
    assert await jobs.take_dead("none", exact.letters[0].id) is None
    assert [d.job_id for d in (await jobs.dead_letters("other", limit=9, after=None)).letters] == [
        "resp_x"
    ]
    assert (await jobs.depth("p", 1)).dead == 4
    again = await jobs.put_dead("p", taken.job_id, taken.error, taken.attempts)
    assert again != taken.id
    newest = (await jobs.dead_letters("p", limit=1, after=None)).letters[0]
    assert (newest.id, newest.job_id, newest.attempts) == (again, "resp_0", 1)
    assert (await jobs.dead_letters("none", limit=10, after=None)).letters == []


async def test_failed_retries_are_counted_per_partition(store: Store) -> None:
    jobs = store.jobs
    for shard in range(2):
        assert await jobs.enqueue("p", shard, f"j{shard}", 10)
    assert (await jobs.depth("p", 2)).retries == 0
    [d0] = await jobs.take("p", 0, "c1", 1, 0.05)
    [d1] = await jobs.take("p", 1, "c1", 1, 0.05)
    await jobs.retry(d0, failed=True)
    await jobs.retry(d1, failed=True)
    await jobs.retry(d1, failed=True)  # not pending any more: neither queued nor counted
    [again] = await jobs.take("p", 0, "c1", 1, 0.05)
    await jobs.retry(again)  # handed back by a draining worker: no failure
    depth = await jobs.depth("p", 2)
    assert (depth.retries, depth.waiting) == (2, 2)
    assert (await jobs.depth("q", 2)).retries == 0


@pytest.mark.parametrize("tenant", ["", "acme"])
async def test_a_failed_record_is_queued_again_with_a_fresh_round_of_attempts(
    store: Store, tenant: str
) -> None:
    jobs = store.for_tenant(tenant).jobs
    await jobs.create("resp_1", {"status": b"queued", "req": b"{}"}, 3600)
    for attempt in (1, 2):
        start = await jobs.start("resp_1", MAX_ATTEMPTS, "c1")
        assert (start.verdict, start.attempt) == ("run", attempt)
    assert (await jobs.start("resp_1", MAX_ATTEMPTS, "c1")).verdict == "exhausted"
    error = b'{"code": "upstream_error", "message": "down"}'
    fields = {"status": b"failed", "error": error, "done": b"1.0", "text": b"partial"}
    assert await jobs.finish("resp_1", 2, fields, [])
    assert await jobs.requeue("resp_404") is None
    assert await jobs.requeue("resp_1") == "failed"
    record = await jobs.read("resp_1")
    assert record is not None
    assert record["status"] == b"queued" and record["lasterr"] == error
    assert not {"error", "done", "text"} & set(record)
    assert await jobs.requeue("resp_1") == "queued"  # not failed: left alone
    # A fresh round: attempts 3 and 4, fenced above the earlier ones.
    start = await jobs.start("resp_1", MAX_ATTEMPTS, "c1")
    assert (start.verdict, start.attempt) == ("run", 3)
    assert not await jobs.update("resp_1", 2, {"x": b"1"})  # the old attempt is fenced out
    assert not await jobs.unqueue("resp_1")  # an attempt began: no undoing
    assert (await jobs.start("resp_1", MAX_ATTEMPTS, "c1")).attempt == 4
    assert (await jobs.start("resp_1", MAX_ATTEMPTS, "c1")).verdict == "exhausted"


async def test_unqueue_puts_the_failure_back(store: Store) -> None:
    jobs = store.jobs
    error = b'{"code": "x", "message": "y"}'
    await jobs.create("resp_2", {"status": b"failed", "error": error}, 3600)
    assert await jobs.requeue("resp_2") == "failed"
    assert await jobs.unqueue("resp_2")
    record = await jobs.read("resp_2")
    assert record is not None and record["status"] == b"failed" and record["error"] == error
    assert not await jobs.unqueue("resp_2")  # failed, not queued
