"""A session's turn lease, held by the turn that runs on it.

Turns of one session run one at a time across every instance: a turn takes the
session's lease (and reads its history) in one store round trip, renews it every third
of ``[sessions] turn_lease`` while the model answers, and stores its messages while
releasing it in a second round trip. The lease is short (2 s by default), so a session
whose turn died with its process is free again within that time; a live turn that could
not renew for a whole lease keeps it unless another turn took it meanwhile, and is
stopped if one did (its messages would be refused: the lease is a fencing token).
``[sessions] concurrent_turns`` says what a second turn gets meanwhile: it waits, is
refused (409 ``session_busy``), or asks the running one to stop and then waits.

Every way out of :meth:`Leases.hold` that did not store the turn lets the lease go at
once, so a session is never locked by a turn that is no longer running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Mapping, Sequence
from typing import Any

from ..aio import end_if_cancelled
from ..config import SessionsConfig
from ..errors import Conflict, UpstreamTimeout
from ..store import Store, TurnLease

__all__ = ("Held", "Interrupt", "Leases")

log = logging.getLogger(__name__)

# How long a turn waiting for its session sleeps between tries (grows to the max).
_WAIT_MIN, _WAIT_MAX = 0.005, 0.1


class Interrupt:
    """Asks a running turn to stop at its next chunk (or in its running tool calls): set
    by the lease keeper when another turn of the session asks, or by whoever started the
    turn (a cancelled job)."""

    __slots__ = ("_waiter", "asked")

    def __init__(self) -> None:
        self.asked = False
        self._waiter: asyncio.Future[None] | None = None

    def ask(self) -> None:
        self.asked = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def waiter(self) -> asyncio.Future[None]:
        """A future done once the turn is asked to stop (made only by a turn that waits
        on something other than its model's chunks: tool calls)."""
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()
            if self.asked:
                self._waiter.set_result(None)
        return self._waiter


class Held:
    """A lease while its turn runs: the history it read, and the one way to store the
    turn (which releases the lease in the same step).

    The renewals wait until the first is due (a third of the lease) on the worker's one
    timer for all held leases (:meth:`Leases._watch`): most turns end before it, and so
    make no task, no timer of their own, and never wait for one to stop.
    """

    __slots__ = ("_interrupt", "_keeper", "_leases", "_store", "lease", "session_id",
                 "stored")  # fmt: skip

    def __init__(
        self, store: Store, session_id: str, lease: TurnLease, leases: Leases,
        interrupt: Interrupt,
    ) -> None:  # fmt: skip
        self._store = store
        self._leases = leases
        self._interrupt = interrupt
        self._keeper: asyncio.Task[None] | None = None
        self.session_id = session_id
        self.lease = lease
        self.stored = False
        leases._watch(self)

    @property
    def history(self) -> list[dict[str, Any]]:
        """The messages read with the lease, as stored."""
        return self.lease.history

    @property
    def window(self) -> list[dict[str, Any]]:
        """The same messages as a model call sends them (shared between turns: read only)."""
        return self.lease.window

    @property
    def renewing(self) -> bool:
        """Whether a task renews the lease (only once the first renewal was due)."""
        return self._keeper is not None

    def _start_keeping(self) -> None:
        self._keeper = asyncio.ensure_future(
            self._leases._keep(self._store, self.session_id, self.lease.token, self._interrupt)
        )

    def stop_renewing(self) -> asyncio.Task[None] | None:
        """Stop the renewals; the renewing task to wait for, if one was running (most
        turns end before the first renewal: nothing to wait for, no coroutine)."""
        self._leases._unwatch(self)
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.cancel()
        return keeper

    async def store(self, messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Append the turn's messages and release the lease, in one round trip."""
        if (keeper := self.stop_renewing()) is not None:
            await _ended(keeper)
        stored = await self._store.end_turn(self.session_id, self.lease.token, messages)
        self.stored = True
        return stored


async def _ended(keeper: asyncio.Task[None]) -> None:
    """Wait for a cancelled renewing task to end (whatever its end)."""
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await keeper


class _Hold:
    """:meth:`Leases.hold`'s block: a plain object, not a generator-based context manager
    (one per turn)."""

    __slots__ = ("_deadline", "_held", "_interrupt", "_last", "_leases", "_sid", "_store")

    def __init__(
        self, leases: Leases, store: Store, sid: str, last: int, deadline: float,
        interrupt: Interrupt,
    ) -> None:  # fmt: skip
        self._leases, self._store, self._sid, self._last = leases, store, sid, last
        self._deadline, self._interrupt = deadline, interrupt
        self._held: Held | None = None

    async def __aenter__(self) -> Held:
        lease = await self._leases._take(self._store, self._sid, self._last, self._deadline)
        self._held = Held(self._store, self._sid, lease, self._leases, self._interrupt)
        return self._held

    async def __aexit__(self, *exc_info: object) -> None:
        held = self._held
        assert held is not None
        if (keeper := held.stop_renewing()) is not None:
            await _ended(keeper)
        if not held.stored:
            # The turn failed, was cancelled, or its messages were refused: free the
            # session now rather than when the lease runs out.
            with contextlib.suppress(Exception):
                await self._store.end_turn(self._sid, held.lease.token, [])


class Leases:
    def __init__(self, config: SessionsConfig) -> None:
        self._lease_s = config.turn_lease
        self._policy = config.concurrent_turns
        self.renew_every = config.turn_lease / 3
        # Held leases by when their first renewal is due, in that order (each is due
        # renew_every after it was taken), and the one timer for the earliest.
        self._due: dict[Held, float] = {}
        self._clock: asyncio.TimerHandle | None = None
        self._clock_loop: asyncio.AbstractEventLoop | None = None

    def hold(
        self, store: Store, session_id: str, last: int, deadline: float, interrupt: Interrupt
    ) -> _Hold:
        """Take the session's lease in ``store`` (the turn's tenant's) with its last
        ``last`` messages, keep it while the block runs (``interrupt.asked`` is set when
        another turn asks this one to stop), and let it go unless the block stored the
        turn: ``async with leases.hold(...) as held``."""
        return _Hold(self, store, session_id, last, deadline, interrupt)

    def _watch(self, held: Held) -> None:
        """Start ``held``'s renewals when the first is due, unless it ends before."""
        loop = asyncio.get_running_loop()
        if self._clock_loop is not loop:  # another loop's leases (tests) are long over
            self._due, self._clock, self._clock_loop = {}, None, loop
        self._due[held] = due = loop.time() + self.renew_every
        if self._clock is None:
            self._clock = loop.call_at(due, self._tick)

    def _unwatch(self, held: Held) -> None:
        self._due.pop(held, None)

    def _tick(self) -> None:
        """Start the renewals that are due; wait for the next one due."""
        self._clock = None
        due = self._due
        now = asyncio.get_running_loop().time()
        ready = []
        for held, at in due.items():
            if at > now:
                break
            ready.append(held)
        for held in ready:
            del due[held]
            held._start_keeping()
        if due:
            self._clock = asyncio.get_running_loop().call_at(next(iter(due.values())), self._tick)

    async def _take(self, store: Store, sid: str, last: int, deadline: float) -> TurnLease:
        loop = asyncio.get_running_loop()
        wait = _WAIT_MIN
        asked = False
        while True:
            lease = await store.begin_turn(sid, last, self._lease_s)
            if lease is not None:
                return lease
            if self._policy == "reject":
                raise Conflict("another turn of this session is running", code="session_busy")
            if self._policy == "interrupt" and not asked:
                asked = await store.interrupt_turn(sid)
            if loop.time() + wait > deadline:
                raise UpstreamTimeout(
                    "timed out waiting for the session's running turn", code="session_busy"
                )
            await asyncio.sleep(wait * (0.5 + random.random()))
            wait = min(_WAIT_MAX, wait * 2)

    async def _keep(self, store: Store, sid: str, token: int, interrupt: Interrupt) -> None:
        """Renew the lease every third of it while the turn runs, from when the first
        renewal is due; stop the turn when another turn asks it to, or took the session
        (this one stalled past its lease)."""
        while True:
            try:
                state = await store.renew_turn(sid, token, self._lease_s)
            except Exception as exc:
                # The store unreachable for a moment: try again at the next third. The
                # lease runs out only if no renewal gets through for a whole lease, and
                # even then the turn keeps it unless another turn took it meanwhile.
                log.warning("renewing the turn lease of session %s failed: %r", sid, exc)
                state = None
            if state == "interrupted":
                interrupt.ask()
                return
            if state == "lost":
                # Another turn runs now: stop at the next chunk (storing is refused anyway,
                # turn_lost), so that two turns of the session never run on for long.
                log.warning("turn on session %s lost its lease to another turn (stalled?)", sid)
                interrupt.ask()
                return
            # Storing the turn cancels this and waits for it: a cancel dropped inside a
            # renewal (see end_if_cancelled) would leave the turn waiting for good.
            end_if_cancelled()
            await asyncio.sleep(self.renew_every)
