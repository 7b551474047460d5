"""A caller's allowance: admissions taken from the worker's leases in batches, so that a
request of a busy key is admitted by decrementing one integer (docs/auth.md, "Leases").

An allowance belongs to one identity object (a key's record as the key cache holds it)
and its rules. It takes up to :data:`ALLOT` request places from the oldest block of each
of its leases with a requests limit, and holds up to :data:`ALLOT_SLOTS` turn slots of
each with a turn limit, at once: places and slots the worker's leases reserved in the
store already, so nothing more is admitted than before. A request then takes one place
and one slot from the allowance; a cache hit gives its slot back and is counted there,
its usage written with the limiter's next write. The allowance is used until its places
or slots run out, its places or its leases expire, or anything about the leases changes
(a lease made, dropped, limited anew or lost, tokens charged: :attr:`Leases.version`);
then it is retired (what it did not use goes back to its leases, or its places to the
store with the next lease call once they expired) and the next request takes a new one.
An allowance whose life ended is retired before the next lease call at the latest
(:meth:`agentd.auth.limits.Limiter._sweep`), so a caller gone quiet or an identity
replaced holds nothing.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

from ..store import Charge, Rule
from .headers import REQUESTS_HEADERS, TOKENS_HEADERS
from .identity import Identity
from .leases import Lease, Leases

__all__ = ("ALLOT", "ALLOT_SLOTS", "Allowance", "Limiter", "allot")

# Places taken from each lease at once, and turn slots held of each. Places a caller
# holds unused are given back when its allowance is retired (they stay reserved in the
# store meanwhile: other workers see at most ALLOT fewer places per busy caller).
ALLOT = 32
ALLOT_SLOTS = 4
# "No limit": an allowance without a requests or a turn limit never runs out of either.
UNLIMITED = 1 << 62

_LIMIT_REQUESTS, _REMAINING_REQUESTS, _RESET_REQUESTS = REQUESTS_HEADERS
_LIMIT_TOKENS, _REMAINING_TOKENS, _RESET_TOKENS = TOKENS_HEADERS


class Limiter(Protocol):
    """What allowances and tickets need of :class:`agentd.auth.limits.Limiter`."""

    leases: Leases

    def counted(self, allowance: Allowance) -> None: ...

    def settled(self, ticket: Any, charge: Charge) -> None: ...

    def new_id(self) -> str: ...

    def ask(self, ticket: Any) -> asyncio.Future[None]: ...


class Allowance:
    """Admissions of one identity taken from its leases at once."""

    __slots__ = (
        "after", "allotted", "base", "before", "conc", "dirty", "free", "hits", "identity",
        "leases", "left", "limiter", "places", "reported", "retired", "rules", "until",
        "version",
    )  # fmt: skip

    def __init__(self, limiter: Limiter, identity: Identity, rules: list[Rule]) -> None:
        self.limiter, self.identity, self.rules = limiter, identity, rules
        self.leases: list[Lease] = []
        # (lease, the block its places came from: [usable until, bucket, places left])
        # of the leases with a requests limit; the leases with a turn limit.
        self.places: list[tuple[Lease, list[Any]]] = []
        self.conc: list[Lease] = []
        # Admissions left (places), slots held and not in use, usable until (monotonic),
        # and the leases' version they were taken at.
        self.left = self.allotted = self.free = UNLIMITED
        self.until = float("inf")
        self.version = limiter.leases.version
        # The requests' remaining count is this plus ``left``; the header lines around it.
        self.base = -1
        self.before = self.after = b""
        # Cache hits not yet counted, admissions already counted (``allotted - left``
        # is every admission), and whether the limiter's next write must count them.
        self.hits = self.reported = 0
        self.dirty = False
        self.retired = False

    def release(self, hits: int = 0) -> None:
        """A request admitted here ended: its slot is free again (``hits``: 1 when it was
        a cache hit, counted here and written in batches)."""
        self.hits += hits
        if not self.dirty:
            self.dirty = True
            self.limiter.counted(self)
        if self.retired:
            for lease in self.conc:
                lease.busy -= 1
        else:
            self.free += 1

    def retire(self) -> None:
        """Give back what is unused: the slots to the leases (those in use come back one
        by one as their requests end), the places to their lease while they are usable,
        else to the store (with the next lease call)."""
        if self.retired:
            return
        self.retired = True
        self.version = -1
        left = self.left
        if left and self.places:
            now = time.monotonic()
            for lease, block in self.places:
                if block[0] > now:  # still usable: back to the lease
                    places = lease.places
                    if not block[2]:  # used up, it had left the lease's blocks
                        at = 0
                        while at < len(places) and places[at][0] <= block[0]:
                            at += 1
                        places.insert(at, block)
                    block[2] += left
                    lease.left += left
                    lease.expires = places[0][0]
                    continue
                returned, bucket = lease.returned, block[1]
                if returned and returned[-1][0] == bucket:
                    returned[-1] = (bucket, returned[-1][1] + left)
                else:
                    returned.append((bucket, left))
        for lease in self.conc:
            lease.busy -= self.free
        self.free = 0
        if not self.dirty:  # its admissions are counted with the next write
            self.dirty = True
            self.limiter.counted(self)

    def _headers(self, requests: Lease | None, tokens: Lease | None) -> None:
        """The header lines around the requests' remaining count: the tightest of the
        leases, as far as this worker knows (the requests' reset is the one at the last
        lease call)."""
        after = ""
        if requests is not None:
            self.before = (f"{_LIMIT_REQUESTS}: {requests.texts[0]}\r\n{_REMAINING_REQUESTS}: "
                           .encode())  # fmt: skip
            after = f"\r\n{_RESET_REQUESTS}: {requests.reset_text}\r\n"
        if tokens is not None:
            remaining, reset = tokens.tokens_texts()
            after += (f"{_LIMIT_TOKENS}: {tokens.texts[1]}\r\n{_REMAINING_TOKENS}: {remaining}\r\n"
                      f"{_RESET_TOKENS}: {reset}\r\n")  # fmt: skip
        self.after = after.encode()


def allot(
    limiter: Limiter, leases: Leases, identity: Identity, rules: list[Rule], batch: int = ALLOT
) -> Allowance | None:
    """A new allowance of ``identity`` from its leases, of up to ``batch`` places and
    slots, or None: a lease has no room (or a limit is too small to lease), and the
    store must check the request."""
    allowance = Allowance(limiter, identity, rules)
    if not rules:
        return allowance  # nothing limits it: only its usage is counted
    taken = leases.find(identity.tenant, rules)
    if taken is None:
        return None
    now = time.monotonic()
    for lease in taken:
        if not lease.room(now):
            leases.short(identity.tenant, taken, now)
            return None
    n, slots, until = batch, min(batch, ALLOT_SLOTS), float("inf")
    for lease in taken:
        until = min(until, lease.fresh_until)
        if lease.refresh_at > now:
            # Retired once the lease wants refreshing, so the next allowance asks for it
            # in time (docs/auth.md, "Leases and a lagging event loop").
            until = min(until, lease.refresh_at)
        if lease.rpm:  # the oldest block has places (room() saw some)
            block = lease.places[0]
            n = min(n, block[2])
            until = min(until, block[0])
        if lease.conc:
            slots = min(slots, lease.cap - lease.busy)
    low = False
    requests = tokens = None
    base = tokens_left = 0
    for lease in taken:
        lease.used += n
        lease.used_at = now
        low = low or now >= lease.refresh_at
        if lease.rpm:
            places = lease.places
            block = places[0]
            allowance.places.append((lease, block))
            block[2] -= n
            if not block[2]:
                places.popleft()
                lease.expires = places[0][0] if places else float("inf")
            lease.left -= n
            low = low or lease.left * 2 < lease.used
            left = lease.requests_base + lease.left
            if requests is None or left < base:
                requests, base = lease, left
        if lease.conc:
            allowance.conc.append(lease)
            lease.busy += slots
            if lease.busy > lease.peak:
                lease.peak = lease.busy
            low = low or lease.busy >= lease.busy_low
        if lease.tpm:
            left = lease.level - lease.charged
            if tokens is None or left < tokens_left:
                tokens, tokens_left = lease, left
    if low:
        leases.want(identity.tenant)
    allowance.leases = taken
    allowance.until = until
    if requests is not None:
        allowance.left = allowance.allotted = n
        allowance.base = base
    if allowance.conc:
        allowance.free = slots
    allowance._headers(requests, tokens)
    return allowance
