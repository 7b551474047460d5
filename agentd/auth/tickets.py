"""A request's ticket in its limits: asked of the store (:class:`Ticket`), or admitted at
once on its caller's allowance (:class:`Leased`, see :mod:`.allowance`)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from ..errors import AgentdError
from ..store import Charge, Rule
from .allowance import Allowance, Limiter
from .charges import NO_CHARGE, charge_of
from .headers import Rendered
from .identity import Identity
from .leases import Lease

__all__ = ("ADMITTED", "PENDING", "REFUSED", "Leased", "Ticket")

# A ticket's admission: asked (no answer yet), admitted, or refused (nothing taken).
PENDING, ADMITTED, REFUSED = 0, 1, 2


class Ticket:
    """One request's place in its limits, from admission to settle.

    :meth:`admitted` waits for the admission (asked when the ticket was made) and gives
    the headers to send, or raises the refusal; :meth:`settle` ends the ticket on every
    path, once, without waiting (it may run after the reply is sent).
    """

    __slots__ = (
        "_charge", "_error", "_limiter", "_state", "_waiter", "checked", "ended", "headers",
        "id", "identity", "leased", "ready", "rules", "slots",
    )  # fmt: skip

    def __init__(
        self, limiter: Limiter, identity: Identity, rules: list[Rule], check: bool
    ) -> None:
        self._limiter, self.identity, self.rules = limiter, identity, rules
        # Its id in the store (its turn slots' member): given when the store admits it.
        self.id = ""
        self.checked = check
        # Whether it was settled; whether it is admitted (answered() gives its headers
        # without waiting or raising).
        self.ended = False
        self.ready = not check
        # A settle that waits for the admission's answer (it may have taken a slot).
        self._charge: Charge | None = None
        self._error: AgentdError | None = None
        # The x-ratelimit-* headers, once admitted.
        self.headers: Mapping[str, str] = {}
        # The scopes whose turn slots the ticket holds, once admitted.
        self.slots: tuple[str, ...] = ()
        self._waiter: asyncio.Future[None] | None = None
        # The worker's leases that admitted it (none: the store did, or it was not checked).
        self.leased: list[Lease] | None = None
        if check:  # the caller's allowance had no room (a :class:`Leased` ticket otherwise)
            self._state = PENDING
            self.id = limiter.new_id()
            self._waiter = limiter.ask(self)
        else:
            self._state = ADMITTED

    async def admitted(self) -> Mapping[str, str]:
        """The ``x-ratelimit-*`` headers; ``RateLimited``, ``QuotaExceeded`` or (fail
        closed) ``StoreUnavailable`` when the request may not run."""
        if self._state == PENDING:
            assert self._waiter is not None
            # Cancelling the wait leaves the answer to the ticket (the waiter is the
            # ticket's own: nobody else awaits it).
            await self._waiter
        if self._error is not None:
            raise self._error
        return self.headers

    def answered(self) -> Mapping[str, str] | None:
        """What :meth:`admitted` gives, without waiting, once the admission is answered
        (at once on a lease); None while it is not."""
        if self._state == PENDING:
            return None
        if self._error is not None:
            raise self._error
        return self.headers

    def settle(
        self,
        usage: Mapping[str, Any] | None = None,
        cache: str = "",
        prompt_chars: int = 0,
        completion_chars: int = 0,
        *,
        ran: bool = True,
    ) -> None:
        """End the ticket: release its slot, charge what the turn cost (``ran``: a turn
        that failed before its model call costs nothing), count its usage."""
        if self.ended:
            return
        self.ended = True
        charge = charge_of(usage, cache, prompt_chars, completion_chars) if ran else NO_CHARGE
        if self._state == PENDING:
            self._charge = charge
        else:
            self._limiter.settled(self, charge)

    def release(self) -> None:
        """Its turn slots in the worker's leases are free again (none: it holds the
        store's, freed by the limiter)."""

    def answer(self, state: int, error: AgentdError | None = None) -> None:
        """The admission's answer (the limiter's): settle now if the request already
        ended."""
        self._state, self._error = state, error
        self.ready = state == ADMITTED
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._charge is not None:
            self._limiter.settled(self, self._charge)


class Leased(Ticket):
    """A ticket admitted at once on its caller's allowance (:class:`.allowance.Allowance`),
    as most requests of a busy key are: it asks nothing of the store and holds no store
    slot, so a request sets only its allowance, its headers and whether it settled; the
    rest is the allowance's or the class's."""

    __slots__ = ("allowance",)

    # Read-only here (they shadow Ticket's slots): nothing writes them on this path.
    _state = ADMITTED
    ready = True
    _error = None
    _charge = None
    _waiter = None
    id = ""
    checked = True
    slots = ()

    def __init__(self, allowance: Allowance) -> None:  # not Ticket's: see above
        self.allowance = allowance
        self.ended = False
        remaining = allowance.base + allowance.left
        self.headers = Rendered(allowance.before, remaining if remaining > 0 else 0,
                                allowance.after)  # fmt: skip

    @property  # type: ignore[override]
    def _limiter(self) -> Limiter:
        return self.allowance.limiter

    @property  # type: ignore[override]
    def identity(self) -> Identity:
        return self.allowance.identity

    @property  # type: ignore[override]
    def rules(self) -> list[Rule]:
        return self.allowance.rules

    @property  # type: ignore[override]
    def leased(self) -> list[Lease]:
        return self.allowance.leases

    def settle(
        self,
        usage: Mapping[str, Any] | None = None,
        cache: str = "",
        prompt_chars: int = 0,
        completion_chars: int = 0,
        *,
        ran: bool = True,
    ) -> None:
        if self.ended:
            return
        self.ended = True
        allowance = self.allowance
        if ran and cache.startswith("hit"):
            # A cache hit charges nothing: counted by its allowance, written in batches.
            allowance.release(1)
            return
        charge = charge_of(usage, cache, prompt_chars, completion_chars) if ran else NO_CHARGE
        allowance.limiter.settled(self, charge)

    def release(self) -> None:
        self.allowance.release()
