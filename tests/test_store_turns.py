"""The session turn lease, on every store topology: one turn at a time, fenced appends."""

from __future__ import annotations

import asyncio

import pytest

from agentd.errors import Conflict, NotFound
from agentd.store import Store

from .waiting import wait_until

USER = {"role": "user", "content": "q"}
REPLY = {"role": "assistant", "content": "a"}


async def test_a_turn_takes_the_lease_and_reads_the_last_messages(store: Store) -> None:
    sid = (await store.create_session()).id
    await store.append(sid, [USER, REPLY, USER])
    lease = await store.begin_turn(sid, 2, lease_s=5)
    assert lease is not None and lease.token > 0
    assert [m["seq"] for m in lease.history] == [2, 3]
    assert lease.session.last_seq == 3
    assert await store.begin_turn(sid, 2, lease_s=5) is None  # busy
    stored = await store.end_turn(sid, lease.token, [USER, REPLY])
    assert [m["seq"] for m in stored] == [4, 5]
    again = await store.begin_turn(sid, 0, lease_s=5)
    assert again is not None and again.token > lease.token and again.history == []


async def test_an_expired_lease_fences_out_its_late_append(store: Store) -> None:
    sid = (await store.create_session()).id
    old = await store.begin_turn(sid, 0, lease_s=0.05)
    assert old is not None
    await asyncio.sleep(0.2)  # a pause, not a wait: the 50 ms lease runs out unrenewed
    new = await store.begin_turn(sid, 0, lease_s=5)
    assert new is not None
    assert await store.renew_turn(sid, old.token, 5) == "lost"
    with pytest.raises(Conflict) as lost:
        await store.end_turn(sid, old.token, [USER, REPLY])
    assert lost.value.code == "turn_lost"
    await store.end_turn(sid, new.token, [USER, REPLY])
    assert [m["seq"] for m in await store.history(sid)] == [1, 2]


async def test_a_lease_that_ran_out_with_no_taker_is_renewed_again(store: Store) -> None:
    sid = (await store.create_session()).id
    stalled = await store.begin_turn(sid, 0, lease_s=0.05)
    assert stalled is not None
    await asyncio.sleep(0.2)  # a pause, not a wait: the holder stalls past its lease
    assert await store.renew_turn(sid, stalled.token, 5) == "held"  # nobody took it
    assert await store.begin_turn(sid, 0, lease_s=5) is None  # held again
    await store.end_turn(sid, stalled.token, [USER, REPLY])
    assert [m["seq"] for m in await store.history(sid)] == [1, 2]


async def test_a_released_lease_is_not_taken_again_by_a_late_renewal(store: Store) -> None:
    sid = (await store.create_session()).id
    lease = await store.begin_turn(sid, 0, lease_s=5)
    assert lease is not None
    await store.end_turn(sid, lease.token, [])
    # A renewal sent before the release but run after it (a keeper cancelled mid-call).
    assert await store.renew_turn(sid, lease.token, 5) == "lost"
    assert await store.begin_turn(sid, 0, lease_s=5) is not None


async def test_interrupt_is_seen_by_the_running_turn_on_renewal(store: Store) -> None:
    sid = (await store.create_session()).id
    assert await store.interrupt_turn(sid) is False  # nothing running
    lease = await store.begin_turn(sid, 0, lease_s=5)
    assert lease is not None
    assert await store.renew_turn(sid, lease.token, 5) == "held"
    assert await store.interrupt_turn(sid) is True
    assert await store.renew_turn(sid, lease.token, 5) == "interrupted"
    await store.end_turn(sid, lease.token, [])  # let go without appending
    assert await store.history(sid) == []
    assert await store.begin_turn(sid, 0, lease_s=5) is not None


async def test_concurrent_turns_alternate_cleanly(store: Store) -> None:
    sid = (await store.create_session()).id

    async def turn(i: int) -> None:
        lease = await wait_until(
            lambda: store.begin_turn(sid, 4, lease_s=5), what=f"turn {i} to take the lease"
        )
        await asyncio.sleep(0)  # let the others try while this turn holds the lease
        pair = [{"role": "user", "content": str(i)}, {"role": "assistant", "content": str(i)}]
        await store.end_turn(sid, lease.token, pair)

    await asyncio.gather(*(turn(i) for i in range(10)))
    history = await store.history(sid)
    assert [m["role"] for m in history] == ["user", "assistant"] * 10
    for user, reply in zip(history[::2], history[1::2], strict=True):
        assert user["content"] == reply["content"]


async def test_turn_on_unknown_session_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.begin_turn("nope", 1, lease_s=1)
    with pytest.raises(NotFound):
        await store.end_turn("nope", 1, [USER])
