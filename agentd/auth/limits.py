"""The limiter the request path uses: a caller's key and tenant limits checked in one
store call, started beside the session load (:meth:`Limiter.begin`), awaited before the
model is called, and settled once on every path of the request (success, error,
cancel): its turn slot released, its tokens charged, its usage counted.

A worker coalesces this work. The admissions asked in one event-loop tick go to the
store as one call per tenant (checked in order, atomically, as if one by one), with the
turn slots released and renewed since the last call. Charges and usage are summed and
written at most every :data:`FLUSH_S` (or every :data:`FLUSH_EVERY` settles), off every
request's path. So a busy worker makes one round trip per tick, not two per request;
on large limits most requests make none, admitted on their caller's allowance
(:mod:`.allowance`).

Identities of kind ``open`` (``auth.mode = "none"``) and ``admin`` (the operator's key)
are not limited and cost nothing. A caller with no limit at all costs no call before
its turn; its usage is counted with the others'. See docs/auth.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import itertools
import logging
import secrets
import time
from collections.abc import Coroutine
from typing import Any

from ..config import Config, LimitsConfig
from ..errors import AgentdError, StoreUnavailable
from ..metrics import TenantMetrics
from ..store import DAY, MONTH, Ask, Batch, Charge, Limits, Rule, Verdict
from .allowance import ALLOT, Allowance, allot
from .charges import Sums, charge_of
from .headers import ratelimit_headers
from .identity import Identity
from .keys import KeyCache
from .leases import RENEW_S, SLOT_LEASE_MS, Leases
from .refusals import refusal
from .tickets import ADMITTED, REFUSED, Leased, Ticket

__all__ = (
    "FLUSH_EVERY",
    "FLUSH_S",
    "RENEW_S",
    "SLOT_LEASE_MS",
    "Leased",
    "Limiter",
    "Ticket",
    "charge_of",
    "ratelimit_headers",
)

log = logging.getLogger(__name__)

# A turn slot's lease (SLOT_LEASE_MS, in .leases): renewed every RENEW_S while the turn
# runs, so a slot whose worker died is free again within SLOT_LEASE_MS.
# Charges (token buckets, day and month budgets) and usage counters are summed per
# worker and written this often, or sooner once this many requests have settled: the
# most a bucket or a budget lags behind the requests that ended.
FLUSH_S = 0.05
FLUSH_EVERY = 1000
# Kinds of identity that no limit applies to.
UNLIMITED_KINDS = frozenset({"open", "admin"})
# Identities (and rules lists) whose rules (and slot scopes) a worker remembers.
MAX_KNOWN = 10_000
# Allowances past their life are retired at most this often (before a lease call).
SWEEP_S = 0.1
# Fail-open admissions are logged at most this often (a down shard is not a log flood).
OPEN_LOG_EVERY_S = 10.0


def _limited(limits: LimitsConfig | None) -> bool:
    return limits is not None and any(
        (
            limits.requests_per_minute,
            limits.tokens_per_minute,
            limits.max_concurrent_turns,
            limits.tokens_per_day,
            limits.tokens_per_month,
        )
    )


class _Next:
    """One tenant's part of the next call: the admissions asked and the slots to free
    or renew."""

    __slots__ = ("batch", "tickets")

    def __init__(self) -> None:
        self.tickets: list[Ticket] = []
        self.batch = Batch()


class Limiter:
    """A worker's limiter over the store's limits (``Store.limits``)."""

    def __init__(
        self,
        config: Config,
        limits: Limits,
        metrics: TenantMetrics | None = None,
        keys: KeyCache | None = None,
    ) -> None:
        self.auth = config.auth
        # The key records, for the limits of a background job's key.
        self.keys = keys
        self._tenants = {t.name: t.limits for t in config.auth.tenants}
        self.limits = limits
        self.metrics = metrics
        self.fail_open = config.auth.limits_unavailable == "open"
        self._open_logged = 0.0
        # Ticket ids: unique across workers and instances (the slots' members).
        self._prefix = secrets.token_hex(6) + "."
        self._ids = itertools.count()
        # What the next tick's call carries, per tenant.
        self._next: dict[str, _Next] = {}
        self._tick_due = False
        # Tenants with an admission call on its way (at most one each).
        self._asking: set[str] = set()
        # Charges and usage summed since the last write, per (tenant, day, month).
        self._sums: dict[tuple[str, str, str], Sums] = {}
        self._summed = 0
        # id(identity) -> (identity, its sums, its usage counts in them): what settles
        # add to, found once per identity between writes.
        self._counts: dict[int, tuple[Identity, Sums, list[int]]] = {}
        self._timer: asyncio.TimerHandle | None = None
        # Admitted tickets holding turn slots, renewed together every RENEW_S.
        self._held: dict[str, Ticket] = {}
        self._renewer: asyncio.Task[None] | None = None
        # Calls on their way (kept so they are not collected before they end).
        self._calls: set[asyncio.Task[None]] = set()
        self._day, self._month, self._day_ends = "", "", 0.0
        self._rules: dict[int, tuple[Identity, list[Rule]]] = {}
        self._slot_scopes: dict[int, tuple[list[Rule], tuple[str, ...]]] = {}
        # Reservations on large limits, so most requests need no call (see .leases).
        # Its block members: never a ticket id (those end in hex digits).
        self.leases = Leases(limits, self._prefix + "slot-", self._today, self._sweep)
        self._swept = 0.0
        # id(identity) -> its allowance (see .allowance), and those with admissions or
        # hits to count with the next write.
        self._allowed: dict[int, Allowance] = {}
        self._dirty: list[Allowance] = []

    def new_id(self) -> str:
        return f"{self._prefix}{next(self._ids):x}"

    def rules(self, identity: Identity) -> list[Rule]:
        """The scopes whose limits apply to ``identity``: its key's, then its tenant's
        (remembered per identity object: the key cache hands out the same one while it
        holds the key's record)."""
        known = self._rules.get(id(identity))
        if known is not None and known[0] is identity:
            return known[1]
        found = self._find_rules(identity)
        if len(self._rules) >= MAX_KNOWN:
            self._rules.clear()
        self._rules[id(identity)] = (identity, found)
        return found

    def _find_rules(self, identity: Identity) -> list[Rule]:
        found = []
        if identity.kind == "key" and identity.key_id and _limited(identity.limits):
            assert identity.limits is not None
            found.append(Rule("k:" + identity.key_id, identity.limits))
        tenant = self._tenants.get(identity.tenant, self.auth.tenant_limits)
        if _limited(tenant):
            found.append(Rule("t", tenant))
        return found

    async def payer(self, identity: Identity | None) -> Identity | None:
        """A background job's payer (its tenant, kind and key id, stored with the job)
        with its key's current limits, read through the key cache: a job is charged to
        its key's limits as well as its tenant's. A key gone (revoked) or unreadable
        leaves the tenant's alone."""
        if identity is None or identity.kind != "key" or not identity.key_id or not self.keys:
            return identity
        try:
            limits = await self.keys.limits_of(identity.key_id)
        except AgentdError as exc:
            log.debug("limits: the limits of key %s are unreadable: %s", identity.key_id, exc)
            return identity
        return identity if limits is None else dataclasses.replace(identity, limits=limits)

    def begin(self, identity: Identity | None, check: bool = True) -> Ticket | None:
        """Start the admission of a request by ``identity`` (None: no ticket, nothing to
        check or count). ``check=False``: only charge it (a background job, admitted
        when it was queued)."""
        if identity is None or identity.kind in UNLIMITED_KINDS or not identity.tenant:
            return None
        if check:
            # Most requests: one integer taken from the caller's allowance.
            allowance = self._allowed.get(id(identity))
            if (
                allowance is not None
                and allowance.identity is identity
                and allowance.left
                and allowance.free
                and allowance.version == self.leases.version
                and time.monotonic() < allowance.until
            ):
                allowance.left -= 1
                allowance.free -= 1
                return Leased(allowance)
            return self._allot(identity)
        return Ticket(self, identity, self.rules(identity), False)

    def _allot(self, identity: Identity) -> Ticket:
        """:meth:`begin` when the caller's allowance is used up or stale: a new one, or the
        store's check."""
        key = id(identity)
        old = self._allowed.pop(key, None)
        if old is not None:
            old.retire()
        rules = self.rules(identity)
        # A connection token's identity is made anew for each request (never found
        # again): its allowance is for that request alone.
        single = identity.kind == "token"
        allowance = allot(self, self.leases, identity, rules, 1 if single else ALLOT)
        if allowance is None:
            return Ticket(self, identity, rules, True)
        allowance.left -= 1
        allowance.free -= 1
        ticket = Leased(allowance)
        if single:
            allowance.retire()
            return ticket
        if len(self._allowed) >= MAX_KNOWN:
            self._retire_all()
        self._allowed[key] = allowance
        return ticket

    def _sweep(self) -> None:
        """Retire the allowances whose life ended (a caller gone quiet, an identity
        replaced by a key record read again), so that what they hold goes back and an
        unused lease is given back after IDLE_S; at most every SWEEP_S."""
        now = time.monotonic()
        if now - self._swept < SWEEP_S:
            return
        self._swept = now
        version = self.leases.version
        ended = [k for k, a in self._allowed.items() if a.until <= now or a.version != version]
        for key in ended:
            self._allowed.pop(key).retire()

    def _retire_all(self) -> None:
        for allowance in self._allowed.values():
            allowance.retire()
        self._allowed.clear()

    def counted(self, allowance: Allowance) -> None:
        """``allowance`` has admissions or hits to count with the next write."""
        self._dirty.append(allowance)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_S, self._flush)

    def _collect(self) -> None:
        """Count the admissions and cache hits of the allowances since the last write."""
        dirty, self._dirty = self._dirty, []
        metrics = self.metrics
        for allowance in dirty:
            allowance.dirty = False
            identity = allowance.identity
            admitted = allowance.allotted - allowance.left - allowance.reported
            if admitted:
                allowance.reported += admitted
                if metrics is not None:
                    metrics.request(identity.tenant, "admitted", admitted)
            hits = allowance.hits
            if hits:
                allowance.hits = 0
                counts = self._usage(identity)
                counts[0] += hits
                counts[3] += hits

    # -- the calls ---------------------------------------------------------------------

    def ask(self, ticket: Ticket) -> asyncio.Future[None]:
        """Put ``ticket``'s admission in the next tick's call; its answer's waiter."""
        self._tenant_next(ticket.identity.tenant).tickets.append(ticket)
        return asyncio.get_running_loop().create_future()

    def _tenant_next(self, tenant: str) -> _Next:
        found = self._next.get(tenant)
        if found is None:
            found = self._next[tenant] = _Next()
            if not self._tick_due and tenant not in self._asking:
                self._tick_due = True
                asyncio.get_running_loop().call_soon(self._tick)
        return found

    def _tick(self) -> None:
        """Send what this tick asked: one call per tenant, unless one is on its way (what
        was asked meanwhile goes as one call when it returns)."""
        self._tick_due = False
        waiting = {}
        day, month = self._today()
        for tenant, part in self._next.items():
            if tenant in self._asking:
                waiting[tenant] = part
            else:
                self._asking.add(tenant)
                self._spawn(self._ask_call(tenant, part, day, month))
        self._next = waiting

    async def _ask_call(self, tenant: str, part: _Next, day: str, month: str) -> None:
        try:
            await self._call(tenant, part.tickets, part.batch, day, month)
        finally:
            self._asking.discard(tenant)
            if tenant in self._next and not self._tick_due:
                self._tick_due = True
                asyncio.get_running_loop().call_soon(self._tick)

    def _flush(self) -> None:
        """Write the summed charges and usage: one call per tenant and day."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._collect()
        self._summed = 0
        due, self._sums = self._sums, {}
        self._counts.clear()
        for (tenant, day, month), sums in due.items():
            self._spawn(self._call(tenant, [], sums.written(), day, month))

    def _spawn(self, call: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(call)
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    async def _call(
        self, tenant: str, tickets: list[Ticket], batch: Batch, day: str, month: str
    ) -> None:
        asks = [Ask(t.rules, t.id) for t in tickets]
        try:
            verdicts = await self.limits.step(tenant, asks, batch, SLOT_LEASE_MS, day, month)
        except StoreUnavailable as exc:
            # The batch is lost: its slots end with their leases; its charges and usage
            # are not counted.
            log.debug("limits: a step of tenant %r failed: %s", tenant, exc)
            self._unavailable(tickets, exc)
            return
        except Exception:
            log.exception("limits: a step of tenant %r failed", tenant)
            for ticket in tickets:
                ticket.answer(REFUSED, AgentdError("the rate limiter failed"))
            return
        admitted = 0
        for ticket, verdict in zip(tickets, verdicts, strict=True):
            admitted += self._answer(ticket, verdict)
        if admitted and self.metrics is not None:
            self.metrics.request(tenant, "admitted", admitted)

    def _answer(self, ticket: Ticket, verdict: Verdict) -> bool:
        """Tell ``ticket`` its verdict; whether it was admitted."""
        if verdict.refused:
            if self.metrics is not None:
                outcome = "quota_exceeded" if verdict.refused in (DAY, MONTH) else "rate_limited"
                self.metrics.request(ticket.identity.tenant, outcome)
            rule = next(r for r in ticket.rules if r.scope == verdict.scope)
            ticket.answer(REFUSED, refusal(rule, verdict))
            return False
        ticket.headers = ratelimit_headers(verdict)
        slots = self._slots_of(ticket.rules)
        if slots:
            ticket.slots = slots
            if not ticket.ended:
                self._held[ticket.id] = ticket
                if self._renewer is None:
                    self._renewer = asyncio.ensure_future(self._renew())
        ticket.answer(ADMITTED)
        return True

    def _slots_of(self, rules: list[Rule]) -> tuple[str, ...]:
        """The scopes of ``rules`` that limit turns at once (remembered per rules list)."""
        known = self._slot_scopes.get(id(rules))
        if known is not None and known[0] is rules:
            return known[1]
        found = tuple(r.scope for r in rules if r.limits.max_concurrent_turns)
        if len(self._slot_scopes) >= MAX_KNOWN:
            self._slot_scopes.clear()
        self._slot_scopes[id(rules)] = (rules, found)
        return found

    def _unavailable(self, tickets: list[Ticket], exc: StoreUnavailable) -> None:
        if not tickets:
            return
        if not self.fail_open:
            for ticket in tickets:
                ticket.answer(REFUSED, StoreUnavailable(exc.message, retry_after=exc.retry_after))
            return
        now = time.monotonic()
        if now - self._open_logged >= OPEN_LOG_EVERY_S:
            self._open_logged = now
            first = tickets[0].identity
            log.warning(
                "limits unavailable: admitting %s of tenant %r without limits "
                "(auth.limits_unavailable = open)",
                first.who,
                first.tenant,
            )
        for ticket in tickets:
            ticket.answer(ADMITTED)  # without limits or headers, holding no slot

    async def _renew(self) -> None:
        """Extend every held slot's lease, every RENEW_S, while any is held."""
        try:
            while self._held:
                await asyncio.sleep(RENEW_S)
                for ticket in self._held.values():
                    renewed = self._tenant_next(ticket.identity.tenant).batch.renewed
                    renewed.extend((scope, ticket.id) for scope in ticket.slots)
        finally:
            self._renewer = None

    # -- settling ----------------------------------------------------------------------

    def settled(self, ticket: Ticket, charge: Charge) -> None:
        """A ticket's request ended: free its slots in the next tick's call, and add its
        charge and usage to the sums."""
        if ticket._state != ADMITTED:
            return  # refused, or never answered: nothing was taken or counted
        identity = ticket.identity
        tenant = identity.tenant
        if charge.tokens:
            if self.metrics is not None:
                self.metrics.charged(tenant, charge.prompt_tokens, charge.completion_tokens)
            self.leases.charged(tenant, ticket.rules, charge.tokens)
        ticket.release()  # its slot in this worker's leases, if it holds one
        if ticket.slots:
            self._held.pop(ticket.id, None)
            released = self._tenant_next(tenant).batch.released
            released.extend((scope, ticket.id) for scope in ticket.slots)
        counts = self._usage(identity)
        counts[0] += 1
        if charge.tokens:
            counts[1] += charge.prompt_tokens
            counts[2] += charge.completion_tokens
        elif charge.cache_hit:
            counts[3] += 1
        if charge.tokens or not ticket.checked:
            batch = self._counts[id(identity)][1].batch
            for rule in ticket.rules:
                if charge.tokens:
                    entry = batch.charged.setdefault(rule.scope, [0, 0])
                    entry[0] = rule.limits.tokens_per_minute
                    entry[1] += charge.tokens
                if not ticket.checked and rule.limits.requests_per_minute:
                    # A request admit never saw (a background job's) is logged now.
                    entry = batch.logged.setdefault(rule.scope, [0, 0])
                    entry[0] = rule.limits.requests_per_minute
                    entry[1] += 1
        self._summed += 1
        if self._summed >= FLUSH_EVERY:
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_S, self._flush)

    def _usage(self, identity: Identity) -> list[int]:
        """The usage counts of ``identity`` in the sums to write."""
        if time.time() >= self._day_ends:
            self._today()
        found = self._counts.get(id(identity))
        if found is None or found[0] is not identity:
            found = self._counts_of(identity)
        return found[2]

    def _counts_of(self, identity: Identity) -> tuple[Identity, Sums, list[int]]:
        """The sums of ``identity``'s tenant and day, and its usage counts in them (kept
        per identity object until the sums are written or the day ends)."""
        tenant, day, month = identity.tenant, self._day, self._month
        sums = self._sums.get((tenant, day, month))
        if sums is None:
            sums = self._sums[(tenant, day, month)] = Sums()
        key = identity.key_id if identity.kind == "key" else identity.kind
        counts = sums.keys.get(key)
        if counts is None:
            counts = sums.keys[key] = [0, 0, 0, 0]
        found = self._counts[id(identity)] = (identity, sums, counts)
        return found

    def _today(self) -> tuple[str, str]:
        """The current UTC day and month, recomputed once a day."""
        now = time.time()
        if now >= self._day_ends:
            today = datetime.datetime.fromtimestamp(now, datetime.UTC)
            self._day, self._month = today.strftime("%Y%m%d"), today.strftime("%Y%m")
            self._day_ends = (now // 86400 + 1) * 86400
            self._counts.clear()  # they count in the day that ended
        return self._day, self._month

    async def close(self) -> None:
        """Write what is pending and let the calls on their way end (a worker that
        drains)."""
        self._retire_all()
        await self.leases.close()
        if self._renewer is not None:
            self._renewer.cancel()
        self._flush()
        while self._next or self._calls:
            if self._next and not self._tick_due:
                self._tick()
            if self._calls:
                await asyncio.gather(*self._calls, return_exceptions=True)
            else:
                await asyncio.sleep(0)  # the tick already due
