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
from collections.abc import AsyncIterator, Mapping, Sequence
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

    The renewals wait on a plain timer until the first is due (a third of the lease):
    most turns end before it fires, and so make no task and never wait for one to stop.
    """

    __slots__ = ("_interrupt", "_keeper", "_leases", "_store", "_timer", "lease",
                 "session_id", "stored")  # fmt: skip

    def __init__(
        self, store: Store, session_id: str, lease: TurnLease, leases: Leases,
        interrupt: Interrupt,
    ) -> None:  # fmt: skip
        self._store = store
        self._leases = leases
        self._interrupt = interrupt
        self._keeper: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            leases.renew_every, self._start_keeping
        )
        self.session_id = session_id
        self.lease = lease
        self.stored = False

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
        self._timer = None
        self._keeper = asyncio.ensure_future(
            self._leases._keep(self._store, self.session_id, self.lease.token, self._interrupt)
        )

    async def stop_renewing(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await keeper

    async def store(self, messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Append the turn's messages and release the lease, in one round trip."""
        await self.stop_renewing()
        stored = await self._store.end_turn(self.session_id, self.lease.token, messages)
        self.stored = True
        return stored


class Leases:
    def __init__(self, config: SessionsConfig) -> None:
        self._lease_s = config.turn_lease
        self._policy = config.concurrent_turns
        self.renew_every = config.turn_lease / 3

    @contextlib.asynccontextmanager
    async def hold(
        self, store: Store, session_id: str, last: int, deadline: float, interrupt: Interrupt
    ) -> AsyncIterator[Held]:
        """Take the session's lease in ``store`` (the turn's tenant's) with its last
        ``last`` messages, keep it while the block runs (``interrupt.asked`` is set when
        another turn asks this one to stop), and let it go unless the block stored the
        turn."""
        lease = await self._take(store, session_id, last, deadline)
        held = Held(store, session_id, lease, self, interrupt)
        try:
            yield held
        finally:
            await held.stop_renewing()
            if not held.stored:
                # The turn failed, was cancelled, or its messages were refused: free the
                # session now rather than when the lease runs out.
                with contextlib.suppress(Exception):
                    await store.end_turn(session_id, lease.token, [])

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
