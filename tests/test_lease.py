"""A turn's hold on its session (agentd/agent/lease.py), on every store topology: every
way out of a turn that did not store it lets the session go at once."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from aiohttp.test_utils import TestServer

from agentd.agent import Agents, Interrupt, Listener, TurnRequest
from agentd.agent.lease import Leases
from agentd.config import Config, from_dict
from agentd.errors import Conflict, PayloadTooLarge
from agentd.server.app import create_app
from agentd.server.keys import AGENTS
from agentd.store import Store

from .store_helpers import TIMEOUT, user
from .waiting import wait_until


@pytest.fixture
async def agents(store_config: Config) -> AsyncIterator[Agents]:
    """Agents on each store topology; a second turn of a busy session is refused (409),
    so a lease left behind shows at once rather than after it expires."""
    raw = from_dict({"cache": {"disk_path": ""}})
    config = dataclasses.replace(
        store_config,
        cache=raw.cache,
        sessions=dataclasses.replace(
            store_config.sessions, concurrent_turns="reject", max_message_bytes=1024
        ),
    )
    server = TestServer(create_app(config), host="127.0.0.1")
    await server.start_server()
    yield server.app[AGENTS]
    await server.close()


def deadline() -> float:
    return asyncio.get_running_loop().time() + 10


def say(sid: str, content: str) -> TurnRequest:
    return TurnRequest("echo", [{"role": "user", "content": content}], sid)


async def test_a_turn_whose_messages_are_refused_lets_the_session_go(agents: Agents) -> None:
    sid = (await agents.store.create_session()).id
    with pytest.raises(PayloadTooLarge):
        await agents.run(say(sid, "x" * 2000), deadline=deadline())
    done = await agents.run(say(sid, "next"), deadline=deadline())  # not session_busy
    assert done.text == "next" and [m["content"] for m in done.stored] == ["next", "next"]


async def test_a_turn_that_fails_midway_lets_the_session_go(agents: Agents) -> None:
    sid = (await agents.store.create_session()).id

    class Gone(Listener):
        async def delta(self, text: str) -> None:
            raise ConnectionResetError("the client went away")

    with pytest.raises(ConnectionResetError):
        await agents.run(say(sid, "one two"), deadline=deadline(), listener=Gone())
    assert await agents.store.history(sid) == []  # nothing stored
    assert (await agents.run(say(sid, "again"), deadline=deadline())).text == "again"


async def test_a_cancelled_turn_lets_the_session_go(agents: Agents) -> None:
    sid = (await agents.store.create_session()).id
    started = asyncio.Event()

    class Waits(Listener):
        async def delta(self, text: str) -> None:
            started.set()
            await asyncio.Event().wait()  # until cancelled

    turn = asyncio.create_task(
        agents.run(say(sid, "one two"), deadline=deadline(), listener=Waits())
    )
    await asyncio.wait_for(started.wait(), 10)
    with pytest.raises(Conflict):  # it holds the session while it runs
        await agents.run(say(sid, "busy"), deadline=deadline())
    turn.cancel()
    with pytest.raises(asyncio.CancelledError):
        await turn
    assert (await agents.run(say(sid, "free"), deadline=deadline())).text == "free"
    assert agents.admission.inflight == 0


async def test_an_interrupted_turn_is_stored_as_cancelled(agents: Agents) -> None:
    sid = (await agents.store.create_session()).id
    stop = Interrupt()

    class Stops(Listener):
        async def delta(self, text: str) -> None:
            stop.asked = True

    done = await agents.run(say(sid, "one two three"), deadline=deadline(),
                            interrupt=stop, listener=Stops())  # fmt: skip
    assert done.cancelled and done.text == "one "
    assert [m.get("status") for m in done.stored] == [None, "cancelled"]
    assert (await agents.run(say(sid, "next"), deadline=deadline())).seq == 4


class _DropsCancelInRenewal:
    """The store, except that its first lease renewal holds its answer until a
    cancellation lands, then drops the cancellation and returns the answer: what Python
    3.11's ``asyncio.wait_for`` inside redis-py does when a cancel lands as the reply
    arrives (by chance there, every time here)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.answered = asyncio.Event()
        self.dropped = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def renew_turn(self, session_id: str, token: int, lease_s: float) -> str:
        answer = await self._store.renew_turn(session_id, token, lease_s)
        if self.answered.is_set():
            return answer
        self.answered.set()
        try:
            await asyncio.Event().wait()  # the answer is on its way until the cancel
        except asyncio.CancelledError:
            self.dropped = True
        return answer


async def test_a_turn_is_stored_when_its_lease_keepers_cancel_is_dropped(
    store: Store, store_config: Config
) -> None:
    """A background job's turn used to hang here for good (its job renewed, never
    finished): storing the turn stops the lease keeper first and waits for it."""
    sid = (await store.create_session()).id
    drops = _DropsCancelInRenewal(store)
    leases = Leases(store_config.sessions)
    async with leases.hold(cast(Store, drops), sid, 10, deadline(), Interrupt()) as held:
        await asyncio.wait_for(drops.answered.wait(), TIMEOUT)  # a renewal is on its way
        storing = asyncio.create_task(held.store([user("hi"), {"role": "assistant",
                                                              "content": "hello"}]))  # fmt: skip
        finished, _ = await asyncio.wait({storing}, timeout=TIMEOUT)
        assert drops.dropped, "the cancel did not land during the renewal"
        assert finished, "storing the turn waits on a lease keeper that never ends"
    assert [m["content"] for m in await store.history(sid)] == ["hi", "hello"]
    # The session is free: the next turn takes it at once.
    assert await store.begin_turn(sid, 10, 2.0) is not None


def _keepers() -> list[asyncio.Task[Any]]:
    """The running tasks that renew a turn lease."""
    return [t for t in asyncio.all_tasks()
            if getattr(t.get_coro(), "__qualname__", "") == "Leases._keep"]  # fmt: skip


async def test_a_turn_shorter_than_a_third_of_its_lease_makes_no_keeper_task(
    store: Store, store_config: Config
) -> None:
    """The renewals wait on a timer until the first is due: a short turn (most) makes no
    task and storing it waits for none."""
    sid = (await store.create_session()).id
    leases = Leases(store_config.sessions)
    async with leases.hold(store, sid, 10, deadline(), Interrupt()) as held:
        assert not held.renewing and not _keepers()
        await held.store([user("hi"), {"role": "assistant", "content": "hello"}])
    assert not held.renewing and not _keepers()
    assert [m["content"] for m in await store.history(sid)] == ["hi", "hello"]
    assert await store.begin_turn(sid, 10, 2.0) is not None  # the session is free


async def test_a_turn_past_a_third_of_its_lease_renews_it_and_is_stored(
    store: Store, store_config: Config
) -> None:
    sid = (await store.create_session()).id
    leases = Leases(store_config.sessions)
    async with leases.hold(store, sid, 10, deadline(), Interrupt()) as held:
        await wait_until(lambda: held.renewing, TIMEOUT, "the first renewal")
        assert len(_keepers()) == 1
        # Renewed: a second turn cannot take the session while this one runs.
        assert await store.begin_turn(sid, 10, 2.0) is None
        await held.store([user("hi"), {"role": "assistant", "content": "hello"}])
    assert not held.renewing and not _keepers()
    assert [m["content"] for m in await store.history(sid)] == ["hi", "hello"]
    assert await store.begin_turn(sid, 10, 2.0) is not None


async def test_leases_taken_at_different_times_share_one_timer_and_each_is_renewed(
    store: Store, store_config: Config
) -> None:
    """The worker's one timer for held leases: a lease taken while an earlier one waits
    for its first renewal is renewed too, and one that ended before its turn never is."""
    sids = [(await store.create_session()).id for _ in range(3)]
    leases = Leases(store_config.sessions)
    first = leases.hold(store, sids[0], 10, deadline(), Interrupt())
    short = leases.hold(store, sids[1], 10, deadline(), Interrupt())
    later = leases.hold(store, sids[2], 10, deadline(), Interrupt())
    held_first = await first.__aenter__()
    held_short = await short.__aenter__()
    await short.__aexit__(None, None, None)  # a short turn, over before any renewal
    held_later = await later.__aenter__()
    await wait_until(lambda: held_first.renewing, TIMEOUT, "the first lease's renewal")
    await wait_until(lambda: held_later.renewing, TIMEOUT, "the later lease's renewal")
    assert not held_short.renewing and len(_keepers()) == 2
    for sid in sids[::2]:
        assert await store.begin_turn(sid, 10, 2.0) is None  # both still held
    await first.__aexit__(None, None, None)
    await later.__aexit__(None, None, None)
    assert not _keepers()
    for sid in sids:
        assert await store.begin_turn(sid, 10, 2.0) is not None  # every session is free
