"""Retrying a dead letter when it cannot go through (:class:`agentd.jobs.dead_letters.
DeadLetterDesk`), on every store topology: each refusal leaves the dead letter and the
failed response as they were."""

from __future__ import annotations

import dataclasses

import pytest

from agentd.config import Config
from agentd.errors import Conflict, RateLimited
from agentd.jobs.dead_letters import DeadLetterDesk
from agentd.store import Store

ERROR = b'{"code": "upstream_error", "message": "down"}'


def _desk(store: Store, store_config: Config, max_queued: int = 100) -> DeadLetterDesk:
    jobs = dataclasses.replace(store_config.jobs, max_queued=max_queued)
    return DeadLetterDesk(dataclasses.replace(store_config, jobs=jobs), store)


async def _failed(store: Store, rid: str) -> str:
    """A failed response and its dead letter in the default partition; the letter's id."""
    await store.jobs.create(rid, {"status": b"failed", "error": ERROR}, 3600)
    return await store.jobs.put_dead("default", rid, ERROR, 3)


async def _dead_ids(store: Store) -> list[str]:
    page = await store.jobs.dead_letters("default", limit=100, after=None)
    return [d.job_id for d in page.letters]


async def test_a_full_queue_leaves_the_letter_and_the_failure(
    store: Store, store_config: Config
) -> None:
    desk = _desk(store, store_config, max_queued=1)
    [default] = [p for p in store_config.all_partitions() if p.name == "default"]
    for shard in range(default.queue_shards):  # every shard full (1 job each)
        assert await store.jobs.enqueue("default", shard, f"resp_ahead{shard}", 1)
    entry = await _failed(store, "resp_1")
    with pytest.raises(RateLimited) as info:
        await desk.retry("default", entry)
    assert info.value.code == "queue_full"
    record = await store.jobs.read("resp_1")
    assert record is not None and record["status"] == b"failed" and record["error"] == ERROR
    assert await _dead_ids(store) == ["resp_1"]  # back, under a new id
    assert (await store.jobs.dead_letters("default", limit=1, after=None)).letters[0].id != entry


async def test_an_expired_or_unfailed_response_is_a_conflict(
    store: Store, store_config: Config
) -> None:
    desk = _desk(store, store_config)
    gone = await store.jobs.put_dead("default", "resp_gone", ERROR, 3)
    with pytest.raises(Conflict) as info:
        await desk.retry("default", gone)
    assert info.value.code == "response_expired"
    await store.jobs.create("resp_done", {"status": b"completed"}, 3600)
    done = await store.jobs.put_dead("default", "resp_done", ERROR, 3)
    with pytest.raises(Conflict) as info:
        await desk.retry("default", done)
    assert info.value.code == "response_not_failed"
    assert sorted(await _dead_ids(store)) == ["resp_done", "resp_gone"]
    assert (await store.jobs.depth("default", 1)).waiting == 0


async def test_a_retry_queues_the_job_of_the_letters_tenant(
    store: Store, store_config: Config
) -> None:
    desk = _desk(store, store_config)
    acme = store.for_tenant("acme")
    await acme.jobs.create("resp_t", {"status": b"failed", "error": ERROR}, 3600)
    entry = await store.jobs.put_dead("default", "acme/resp_t", ERROR, 3)
    letter, rid = await desk.retry("default", entry)
    assert (letter.job_id, rid) == ("acme/resp_t", "resp_t")
    record = await acme.jobs.read("resp_t")
    assert record is not None and record["status"] == b"queued"
    [default] = [p for p in store_config.all_partitions() if p.name == "default"]
    taken = [
        d.job_id
        for shard in range(default.queue_shards)
        for d in await store.jobs.take("default", shard, "c1", 10, 0.05)
    ]
    assert taken == ["acme/resp_t"]
    assert await _dead_ids(store) == []
