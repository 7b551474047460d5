"""Session watchers across a reshard's switch (docs/operations.md, "Adding a shard"), on
real redis-servers: at the switch a worker moves every watched channel of a moving slot to
its new server at once, and every watcher keeps hearing its session."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from agentd.fastpath import key_slot
from agentd.store import Store
from agentd.store.redis.reshard import Plan, begin, move, moving_slots

from .procs import RedisServer
from .test_reshard import _open
from .waiting import wait_until

WATCHERS = 20


@pytest.fixture
def three(tmp_path: Path) -> Iterator[list[RedisServer]]:
    started = [RedisServer(tmp_path / f"r{i}") for i in range(3)]
    yield started
    for server in started:
        server.close()


async def _collect(store: Store, sid: str, seqs: list[int]) -> None:
    events = await store.open_watch(sid, after=0)
    try:
        async for event in events:
            seqs += [m["seq"] for m in event.messages or ()]
    finally:
        await events.aclose()


async def test_every_watcher_follows_its_session_across_the_switch(
    three: list[RedisServer],
) -> None:
    """Many watched channels reach a server the worker has no subscription on yet, at
    the same moment: each must be subscribed on the one connection its reader reads.
    (Concurrent first subscriptions used to open a connection each, and a watcher whose
    subscription went out on one the reader no longer read went quiet for good.)"""
    old = [s.url for s in three[:2]]
    new = [s.url for s in three]
    moving = moving_slots(old, new)
    plan = Plan(old, new)
    await begin(plan)
    worker, other = await _open(new), await _open(new)
    sids: list[str] = []
    while len(sids) < WATCHERS:
        sid = (await other.create_session()).id
        if key_slot(sid) in moving:
            sids.append(sid)
    # One at a time: the watchers' own first subscriptions do not race.
    heard: dict[str, list[int]] = {sid: [] for sid in sids}
    tasks = []
    for sid in sids:
        await other.append(sid, [{"role": "user", "content": "before"}])
        tasks.append(asyncio.create_task(_collect(worker, sid, heard[sid])))
        await wait_until(lambda s=sid: heard[s] == [1], 10, "the watcher to start")  # type: ignore[misc]
    # The switch (the worker reroutes every channel at once), then every key moved.
    report = await move(plan, announce_s=3.0)
    assert not report.stopped
    assert worker.shards.moving is not None  # type: ignore[attr-defined]
    assert worker.shards.moving.pulling()  # type: ignore[attr-defined]
    for sid in sids:
        await other.append(sid, [{"role": "user", "content": "after"}])

    def all_heard() -> bool:
        return all(heard[sid] == [1, 2] for sid in sids)

    try:
        await wait_until(all_heard, 30, "every watcher to hear the message after the switch")
        # One pub/sub connection per server for the whole worker: none left behind
        # holding a subscription nobody reads.
        for server in three:
            with redis.Redis(port=server.port) as client:
                assert len(client.client_list(_type="pubsub")) <= 1, server.url
        with redis.Redis(port=three[2].port) as client:
            subscribed = client.pubsub_channels()
        assert sorted(subscribed) == sorted(
            worker._channel(sid).encode()  # type: ignore[attr-defined]
            for sid in sids
            if moving[key_slot(sid)][1] == three[2].url
        )
    finally:
        quiet = [sid for sid in sids if heard[sid] != [1, 2]]
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await plan.close()
        await worker.close()
        await other.close()
    assert quiet == []
