"""A worker's leases on its callers' large limits, so that a busy key or tenant is
admitted without a round trip per request (docs/auth.md, "Leases").

A lease is a reservation the store made for this worker, in the same atomic state every
other admission is checked against (:meth:`agentd.store.limits.Limits.lease`): request
places logged in the requests log (ahead of their use, so every window that may hold
one of their requests counts them), a block of turn slots held like any other slot, and
the token bucket's level and the day's and month's tokens as they were. While a
caller's every scope has room in its lease, its request is admitted here, at once (on
its allowance, taken from the leases in batches: :mod:`.allowance`); any other request
is checked by the store as before (:class:`agentd.auth.limits.Limiter`).
So the limits stay exact across workers and instances: a worker never admits more than
its leases reserved, and what it reserved and did not use is given back.

A lease holds at most 1/:data:`SHARE` of a limit, and only limits of at least
:data:`MIN_LIMIT` requests per minute or turns at once are leased: small limits are
checked request by request, so a burst against them is admitted exactly as before. One
lease call per tenant is on its way at a time, refreshing a lease when a quarter of its
life (:data:`REFRESH_S`) or half of its places is gone, off every request's path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ..config import LimitsConfig
from ..store import LEASE_MS, Grant, LeaseAsk, Limits, Rule
from .headers import duration

__all__ = ("MIN_LIMIT", "SHARE", "Lease", "Leases")

log = logging.getLogger(__name__)

LEASE_S = LEASE_MS / 1000
# A worker's lease holds at most this fraction (1/SHARE) of a limit: what other workers
# may be kept from while it holds places or slots it does not use.
SHARE = 1000
# Requests per minute and turns at once below this are never leased.
MIN_LIMIT = SHARE * 4
# Places and slots a lease asks for at least.
MIN_ASK = 8
# Within 1/MARGIN of the token bucket's depth or of a day's or month's budget, a
# request is checked by the store (what other workers charged meanwhile is not known
# here).
MARGIN = 10
# A lease unused this long gives its slots back.
IDLE_S = 1.0
# A block of turn slots is a set of slots like any request's, held for SLOT_LEASE_MS and
# extended every RENEW_S (by the lease calls, at least that often while it is held).
SLOT_LEASE_MS = 10_000
RENEW_S = SLOT_LEASE_MS / 1000 / 3
# Rules lists whose leases a worker remembers (see Leases.find).
MAX_FOUND = 10_000
# After a failed lease call, none for this long (requests are checked by the store).
RETRY_S = 1.0
# A lease is refreshed once its newest places are this old (a quarter of their life),
# not only at half of it: the next places then come while the current ones have
# LEASE_S - REFRESH_S left, so a loop that lags by up to ~350 ms between the ask and its
# answer still admits on a lease (docs/auth.md, "Leases and a lagging event loop").
REFRESH_S = LEASE_S / 4


def leasable(limits: LimitsConfig) -> bool:
    rpm, conc = limits.requests_per_minute, limits.max_concurrent_turns
    return (not rpm or rpm >= MIN_LIMIT) and (not conc or conc >= MIN_LIMIT)


class Lease:
    """One scope's lease in this worker."""

    __slots__ = (
        "asked_slots", "busy", "busy_low", "cap", "charged", "conc", "day_tokens", "expires",
        "fresh_until",
        "headroom", "left", "level", "limits", "lost", "month_tokens", "peak", "places",
        "refresh_at", "renewed", "requests_base", "reset_text", "returned", "rpm", "scope",
        "short", "size", "texts", "tokens_reset", "total", "tpm", "used", "used_at",
    )  # fmt: skip

    def __init__(self, rule: Rule) -> None:
        self.scope = rule.scope
        # Usable until (monotonic); 0 while it is not (never granted, lost, or its
        # limits changed since).
        self.fresh_until = 0.0
        # When a request wants the lease refreshed (monotonic): REFRESH_S after the ask.
        self.refresh_at = 0.0
        # Request places: [usable until (monotonic), their bucket, left], oldest first;
        # the unused places of expired ones, to give back: (bucket, count).
        self.places: deque[list[Any]] = deque()
        self.left = 0  # their places left
        self.expires = float("inf")  # when the oldest of them expire
        self.returned: list[tuple[int, int]] = []
        self.total = 0  # the requests log's count at the last grant
        # The headers' reset texts: the requests log's at the last grant; the token
        # bucket's remaining and reset texts for the tokens charged since (charged,
        # remaining, reset).
        self.reset_text = ""
        self.tokens_reset: tuple[int, str, str] = (-1, "", "")
        # The block of turn slots: its size, the slots in use, the most in use since the
        # last call, and the size the call on its way asked for.
        self.size = self.busy = self.peak = 0
        self.asked_slots: int | None = None
        # Read per request, made when the two above change: the slots usable now (the
        # block's, or fewer while a call asks to shrink it), and how many in use make
        # the block low (three quarters of it).
        self.cap = self.busy_low = 0
        self.renewed = 0.0  # when the block's leases were last extended (monotonic)
        self.lost = False  # a call's answer was lost: the block is built anew
        self.level = self.day_tokens = self.month_tokens = 0
        self.charged = 0  # tokens charged here since the last call was sent
        # Admitting here stops once ``charged`` reaches this (see :meth:`room`).
        self.headroom = 0
        # Admissions through the lease, and requests it had no room for, since the last
        # call (the demand the next call asks for).
        self.used = self.short = 0
        self.used_at = 0.0
        self.limits = rule.limits
        self.rpm = self.conc = self.tpm = False
        self.requests_base = 0
        self.texts = ("", "")
        self._limited(rule.limits)

    def _limited(self, limits: LimitsConfig) -> None:
        self.limits = limits
        # Which of its limits a request takes a place or a slot of (read per request).
        self.rpm, self.conc = bool(limits.requests_per_minute), bool(limits.max_concurrent_turns)
        self.tpm = bool(limits.tokens_per_minute)
        # The requests' remaining count is this plus the places left.
        self.requests_base = limits.requests_per_minute - self.total
        # The limits as header texts: requests and tokens per minute.
        self.texts = (str(limits.requests_per_minute), str(limits.tokens_per_minute))

    def limited(self, limits: LimitsConfig) -> None:
        """Its limits changed: not usable until a call asks under the new ones."""
        self._limited(limits)
        self.fresh_until = 0.0

    def expire(self, now: float) -> int:
        """Move expired places to the returned ones; the places left."""
        places = self.places
        while places and places[0][0] <= now:
            _, bucket, left = places.popleft()
            if left:
                self.returned.append((bucket, left))
                self.left -= left
        self.expires = places[0][0] if places else float("inf")
        return self.left

    def room(self, now: float) -> bool:
        # A few comparisons per request; the places are looked at only when some expire.
        if now >= self.fresh_until or self.charged >= self.headroom:
            return False
        if self.rpm:
            if now >= self.expires:
                self.expire(now)
            if not self.left:
                return False
        return not self.conc or self.busy < self.cap

    def _headroom(self) -> int:
        """What may be charged here before a request must be checked by the store: the
        token bucket and the budgets stay more than 1/MARGIN away from their limits."""
        lim = self.limits
        tpm, tpd, tpmo = lim.tokens_per_minute, lim.tokens_per_day, lim.tokens_per_month
        room = [1 << 62]
        if tpm:
            room.append(self.level - tpm // MARGIN)
        if tpd:
            room.append(tpd - tpd // MARGIN - self.day_tokens)
        if tpmo:
            room.append(tpmo - tpmo // MARGIN - self.month_tokens)
        return min(room)

    def ask(self, now: float, closing: bool = False) -> LeaseAsk:
        """This scope's part of the next lease call (its demand since the last one;
        ``closing``: none, only the slots in use are kept)."""
        lim = self.limits
        active = not closing and (
            self.used or self.short or self.busy or now - self.used_at < IDLE_S
        )
        demand = max(MIN_ASK, 2 * (self.used + self.short))
        places = 0
        if lim.requests_per_minute and active:
            # A worker's live places stay within its share.
            places = max(0, min(demand, lim.requests_per_minute // SHARE) - self.left)
        slots = 0
        if lim.max_concurrent_turns and active:
            slots = self.size
            if not slots or self.peak * 4 >= slots * 3 or self.short:
                slots = min(max(demand, 2 * self.peak, slots), lim.max_concurrent_turns // SHARE)
        slots = max(slots, self.busy) if lim.max_concurrent_turns else 0
        self.asked_slots = slots
        self._sized()
        renew = bool(slots) and now - self.renewed >= RENEW_S
        if renew:
            self.renewed = now
        returned, self.returned = tuple(self.returned), []
        self.used = self.short = 0
        self.peak = self.busy
        return LeaseAsk(self.scope, lim, places, returned, slots, self.size, renew, self.lost)

    def tokens_texts(self) -> tuple[str, str]:
        """The tokens' remaining and reset texts (made again only after a charge)."""
        texts = self.tokens_reset
        if texts[0] != self.charged:
            per = self.limits.tokens_per_minute
            level = self.level - self.charged
            texts = (self.charged, str(max(0, level)), duration((per - level) * 60_000 // per))
            self.tokens_reset = texts
        return texts[1], texts[2]

    def granted(self, grant: Grant, sent: float, charged: int) -> None:
        if grant.places:
            self.places.append([sent + LEASE_S, grant.bucket, grant.places])
            self.left += grant.places
            self.expires = self.places[0][0]
        self.total = grant.total
        self.requests_base = self.limits.requests_per_minute - grant.total
        self.reset_text = duration(grant.reset_ms)
        self.tokens_reset = (-1, "", "")
        self.size, self.asked_slots = grant.slots, None
        self._sized()
        self.level, self.day_tokens = grant.level, grant.day_tokens
        self.month_tokens = grant.month_tokens
        self.charged -= charged  # what was charged before the call is in the grant
        self.headroom = self._headroom()
        self.fresh_until = sent + LEASE_S
        self.refresh_at = sent + REFRESH_S
        self.lost = False

    def failed(self) -> None:
        """The call's answer is lost: the block may be the old one or the asked one, so
        the next call removes every member either may have and builds it anew; the
        places reserved are left to age out of the log."""
        if self.asked_slots is not None:
            self.size = max(self.size, self.asked_slots)
        self.asked_slots = None
        self._sized()
        self.fresh_until = 0.0
        self.renewed = 0.0
        self.lost = True

    def _sized(self) -> None:
        """The block's size or the size asked changed."""
        size = self.size
        self.cap = size if self.asked_slots is None else min(size, self.asked_slots)
        self.busy_low = (size * 3 + 3) // 4  # busy * 4 >= size * 3

    def idle(self) -> bool:
        return not (self.size or self.busy or self.places or self.returned or self.used)


class Leases:
    """A worker's leases, per (tenant, scope); one lease call per tenant on its way."""

    def __init__(
        self,
        limits: Limits,
        block: str,
        today: Callable[[], tuple[str, str]],
        sweep: Callable[[], None] = lambda: None,
    ) -> None:
        self.limits = limits
        self.block = block
        self._today = today
        # Retires the allowances whose life ended (before a call sees what they hold).
        self._sweep = sweep
        self.enabled = True
        self._tenants: dict[str, dict[str, Lease]] = {}
        self._calling: set[str] = set()
        self._due: set[str] = set()
        self._retry_at: dict[str, float] = {}
        self._calls: set[asyncio.Task[None]] = set()
        self._keeper: asyncio.Task[None] | None = None
        # The leases of a rules list, as the last request of it found them: id(rules) →
        # (rules, tenant, its leases, the version they were found in).
        self._found: dict[int, tuple[list[Rule], str, list[Lease], int]] = {}
        # Bumped when a lease is made, dropped, limited anew or lost, when tokens are
        # charged to one, and when leasing stops: the allowances taken before are
        # retired (see .allowance).
        self.version = 0

    def short(self, tenant: str, taken: list[Lease], now: float) -> None:
        """A request of ``taken`` found no room in one of them: the demand they call for."""
        # Every lease of the request counts it as unmet demand, not only the one without
        # room: the leases one request needs grow together (one short of places while
        # the other has them would send every other request to the store, in turns).
        for lease in taken:
            lease.short += 1
            lease.used_at = now
        self.want(tenant)

    def find(self, tenant: str, rules: list[Rule]) -> list[Lease] | None:
        """The leases of a request of ``rules``, made or limited anew as they need
        (None: a limit too small to lease, or no lease is granted here)."""
        if not self.enabled:
            return None
        found = self._found.get(id(rules))
        if (
            found is not None
            and found[0] is rules
            and found[3] == self.version
            and (found[1] == tenant)
        ):
            return found[2]
        scopes = self._tenants.get(tenant)
        taken: list[Lease] = []
        for rule in rules:
            lease = None if scopes is None else scopes.get(rule.scope)
            if lease is None or lease.limits is not rule.limits:
                if lease is not None and lease.limits == rule.limits:
                    # The same limits in a new object (a key record read again): kept,
                    # so the next request compares by identity.
                    lease.limits = rule.limits
                    self.version += 1
                else:
                    if lease is not None:  # its limits changed: its next call asks under them
                        lease.limited(rule.limits)
                        self.version += 1
                    if not leasable(rule.limits):
                        return None
                    if lease is None:
                        if scopes is None:
                            scopes = self._tenants[tenant] = {}
                        lease = scopes[rule.scope] = Lease(rule)
                        self.version += 1
            taken.append(lease)
        if len(self._found) >= MAX_FOUND:
            self._found.clear()
        self._found[id(rules)] = (rules, tenant, taken, self.version)
        return taken

    def charged(self, tenant: str, rules: list[Rule], tokens: int) -> None:
        """Tokens a request of ``rules`` charged (wherever it was admitted)."""
        scopes = self._tenants.get(tenant)
        if scopes:
            for rule in rules:
                lease = scopes.get(rule.scope)
                if lease is not None:
                    lease.charged += tokens
                    # The allowances taken from it check its headroom and texts anew.
                    self.version += 1

    def want(self, tenant: str) -> None:
        """Call the store for ``tenant``'s leases, now or when its call on its way ends."""
        if tenant in self._calling:
            self._due.add(tenant)
            return
        if time.monotonic() < self._retry_at.get(tenant, 0.0):
            return
        self._calling.add(tenant)
        task = asyncio.ensure_future(self._call(tenant))
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)
        if self._keeper is None:
            self._keeper = asyncio.ensure_future(self._keep())

    async def _call(self, tenant: str, closing: bool = False) -> None:
        try:
            await self._lease(tenant, closing)
        finally:
            self._calling.discard(tenant)
            if tenant in self._due and not closing:
                self._due.discard(tenant)
                self.want(tenant)

    async def _lease(self, tenant: str, closing: bool) -> None:
        scopes = self._tenants.get(tenant, {})
        if not scopes:
            return
        self._sweep()
        sent = time.monotonic()
        leases = list(scopes.values())
        asks = []
        for lease in leases:
            if closing:
                lease.expire(float("inf"))
                lease.fresh_until = 0.0
            else:
                lease.expire(sent)
            asks.append(lease.ask(sent, closing))
        charged = [lease.charged for lease in leases]
        day, month = self._today()
        try:
            grants = await self.limits.lease(tenant, asks, self.block, SLOT_LEASE_MS, day, month)
        except Exception as exc:  # StoreUnavailable above all: the store decides then
            log.debug("limits: a lease call of tenant %r failed: %s", tenant, exc)
            self._retry_at[tenant] = time.monotonic() + RETRY_S
            for lease in leases:
                lease.failed()
            self.version += 1
            return
        self._retry_at.pop(tenant, None)
        if grants is None:  # this store leases nothing
            self.enabled = False
            self._tenants.clear()
            self.version += 1
            return
        for lease, grant, before in zip(leases, grants, charged, strict=True):
            lease.granted(grant, sent, before)
            if closing:
                lease.fresh_until = 0.0
        for scope, lease in list(scopes.items()):
            if lease.idle():
                del scopes[scope]
                self.version += 1
        if not scopes:
            self._tenants.pop(tenant, None)

    async def _keep(self) -> None:
        """Renew the blocks of slots within their lease, give back what idle leases
        hold, while any lease is held."""
        try:
            while self._tenants:
                await asyncio.sleep(RENEW_S)
                for tenant in list(self._tenants):
                    self.want(tenant)
        finally:
            self._keeper = None

    async def close(self) -> None:
        """Give back every place and slot (a worker that drains; its allowances are
        retired first)."""
        self.enabled = False
        self.version += 1
        if self._keeper is not None:
            self._keeper.cancel()
        while self._calls:
            await asyncio.gather(*self._calls, return_exceptions=True)
        for tenant in list(self._tenants):
            self._calling.add(tenant)
            await self._call(tenant, closing=True)
