"""The limiter the request path uses: a caller's key and tenant limits checked in one
store call, started beside the session load (:meth:`Limiter.begin`), awaited before the
model is called, and settled once on every path of the request (success, error,
cancel): its tokens charged, its turn slot released, its usage counted.

Identities of kind ``open`` (``auth.mode = "none"``) and ``admin`` (the operator's key)
are not limited and cost nothing. A caller with no limit at all costs no call before
its turn, only the settle that counts its usage, after the reply. See
docs/auth.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import math
import secrets
import time
from collections.abc import Mapping
from typing import Any

from ..config import Config, LimitsConfig
from ..errors import AgentdError, QuotaExceeded, RateLimited, StoreUnavailable
from ..metrics import TenantMetrics
from ..store import DAY, MONTH, Charge, Limits, Rule, Verdict
from .identity import Identity

__all__ = ("RENEW_S", "SLOT_LEASE_MS", "Limiter", "Ticket", "charge_of", "ratelimit_headers")

log = logging.getLogger(__name__)

# A turn slot's lease: renewed every RENEW_S while the turn runs, so a slot whose worker
# died is free again within SLOT_LEASE_MS.
SLOT_LEASE_MS = 10_000
RENEW_S = SLOT_LEASE_MS / 1000 / 3
# Kinds of identity that no limit applies to.
UNLIMITED_KINDS = frozenset({"open", "admin"})
# Fail-open admissions are logged at most this often (a down shard is not a log flood).
OPEN_LOG_EVERY_S = 10.0

_WHAT = {
    "requests": "requests per minute",
    "tokens": "tokens per minute",
    "concurrency": "turns at once",
    DAY: "tokens per day",
    MONTH: "tokens per month",
}


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


def _duration(ms: int) -> str:
    """A reset time as OpenAI writes it: ``20ms``, ``1s``, ``6m0s``, ``1.5s``."""
    ms = max(0, ms)
    if ms < 1000:
        return f"{ms}ms"
    minutes, rest = divmod(ms, 60_000)
    seconds = f"{rest / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{minutes}m{seconds}" if minutes else seconds


def ratelimit_headers(verdict: Verdict) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-*`` headers for the per-minute limits that apply."""
    headers: dict[str, str] = {}
    for kind, window in (("requests", verdict.requests), ("tokens", verdict.tokens)):
        if window is not None:
            headers[f"x-ratelimit-limit-{kind}"] = str(window.limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(window.remaining)
            headers[f"x-ratelimit-reset-{kind}"] = _duration(window.reset_ms)
    return headers


def charge_of(
    usage: Mapping[str, Any] | None, cache: str, prompt_chars: int, completion_chars: int
) -> Charge:
    """What a turn costs: the upstream's usage, else an estimate (4 characters a token).
    A cache hit calls no model: it is counted as a hit and charges no tokens."""
    if cache.startswith("hit"):
        return Charge(cache_hit=True)
    prompt = completion = None
    if usage:
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not isinstance(prompt, int) or isinstance(prompt, bool):
        prompt = math.ceil(prompt_chars / 4)
    if not isinstance(completion, int) or isinstance(completion, bool):
        completion = math.ceil(completion_chars / 4)
    return Charge(prompt + completion, prompt, completion)


def _utc_day_month() -> tuple[str, str, float, float]:
    """Today and this month (UTC) as ``YYYYMMDD`` and ``YYYYMM``, and the seconds until
    each ends."""
    now = datetime.datetime.now(datetime.UTC)
    tomorrow = (now + datetime.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    next_month = (first + datetime.timedelta(days=32)).replace(day=1)
    return (
        now.strftime("%Y%m%d"),
        now.strftime("%Y%m"),
        (tomorrow - now).total_seconds(),
        (next_month - now).total_seconds(),
    )


class Ticket:
    """One request's place in its limits, from admission to settle.

    :meth:`admitted` waits for the admission (started when the ticket was made) and
    gives the headers to send, or raises the refusal; :meth:`settle` ends the ticket on
    every path, once, without waiting (it may run after the reply is sent).
    """

    __slots__ = (
        "_admission", "_limiter", "_renewal", "_settled", "headers", "id", "identity", "rules",
    )  # fmt: skip

    def __init__(
        self, limiter: Limiter, identity: Identity, rules: list[Rule], check: bool
    ) -> None:
        self._limiter, self.identity, self.rules = limiter, identity, rules
        self.id = secrets.token_hex(8)
        self._settled = False
        # The x-ratelimit-* headers, once admitted.
        self.headers: Mapping[str, str] = {}
        self._renewal: asyncio.Task[None] | None = None
        self._admission: asyncio.Task[dict[str, str]] | None = (
            asyncio.ensure_future(limiter._admit(self)) if check else None
        )

    async def admitted(self) -> Mapping[str, str]:
        """The ``x-ratelimit-*`` headers; ``RateLimited``, ``QuotaExceeded`` or (fail
        closed) ``StoreUnavailable`` when the request may not run."""
        if self._admission is None:
            return {}
        headers = self.headers = await asyncio.shield(self._admission)
        if self._renewal is None and not self._settled and self._holds_slot():
            self._renewal = asyncio.ensure_future(self._renew())
        return headers

    def _holds_slot(self) -> bool:
        return any(r.limits.max_concurrent_turns for r in self.rules)

    async def _renew(self) -> None:
        limiter = self._limiter
        while True:
            await asyncio.sleep(RENEW_S)
            with contextlib.suppress(AgentdError):
                await limiter.limits.renew(self.identity.tenant, self.rules, self.id, SLOT_LEASE_MS)

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
        if self._settled:
            return
        self._settled = True
        if self._renewal is not None:
            self._renewal.cancel()
        charge = charge_of(usage, cache, prompt_chars, completion_chars) if ran else Charge()
        admission = self._admission
        if admission is None or admission.done():
            self._limiter._settle(self, charge)
        else:
            # Cancelled while the admission is on its way: settle once it has an answer
            # (it may have taken a slot).
            admission.add_done_callback(lambda _: self._limiter._settle(self, charge))

    def _admitted_ok(self) -> bool:
        admission = self._admission
        if admission is None:
            return True
        return admission.done() and not admission.cancelled() and admission.exception() is None


class Limiter:
    """A worker's limiter over the store's limits (``Store.limits``)."""

    def __init__(
        self, config: Config, limits: Limits, metrics: TenantMetrics | None = None
    ) -> None:
        self.auth = config.auth
        self._tenants = {t.name: t.limits for t in config.auth.tenants}
        self.limits = limits
        self.metrics = metrics
        self.fail_open = config.auth.limits_unavailable == "open"
        self._open_logged = 0.0
        # Settles on their way (kept so they are not collected before they end).
        self._settling: set[asyncio.Task[None]] = set()

    def rules(self, identity: Identity) -> list[Rule]:
        """The scopes whose limits apply to ``identity``: its key's, then its tenant's."""
        found = []
        if identity.kind == "key" and identity.key_id and _limited(identity.limits):
            assert identity.limits is not None
            found.append(Rule("k:" + identity.key_id, identity.limits))
        tenant = self._tenants.get(identity.tenant, self.auth.tenant_limits)
        if _limited(tenant):
            found.append(Rule("t", tenant))
        return found

    def begin(self, identity: Identity | None, check: bool = True) -> Ticket | None:
        """Start the admission of a request by ``identity`` (None: no ticket, nothing to
        check or count). ``check=False``: only charge it (a background job, admitted
        when it was queued)."""
        if identity is None or identity.kind in UNLIMITED_KINDS or not identity.tenant:
            return None
        rules = self.rules(identity)
        return Ticket(self, identity, rules, check and bool(rules))

    async def _admit(self, ticket: Ticket) -> dict[str, str]:
        identity = ticket.identity
        day, month, day_left, month_left = _utc_day_month()
        try:
            verdict = await self.limits.admit(
                identity.tenant, ticket.rules, ticket.id, SLOT_LEASE_MS, day, month
            )
        except StoreUnavailable:
            if not self.fail_open:
                raise
            now = time.monotonic()
            if now - self._open_logged >= OPEN_LOG_EVERY_S:
                self._open_logged = now
                log.warning(
                    "limits unavailable: admitting %s of tenant %r without limits "
                    "(auth.limits_unavailable = open)",
                    identity.who,
                    identity.tenant,
                )
            return {}
        if not verdict.refused:
            if self.metrics is not None:
                self.metrics.request(identity.tenant, "admitted")
            return ratelimit_headers(verdict)
        whose = "this API key's" if verdict.scope.startswith("k:") else "the tenant's"
        rule = next(r for r in ticket.rules if r.scope == verdict.scope)
        what = _WHAT[verdict.refused]
        limit = _limit_of(rule.limits, verdict.refused)
        if verdict.refused in (DAY, MONTH):
            if self.metrics is not None:
                self.metrics.request(identity.tenant, "quota_exceeded")
            ends = day_left if verdict.refused == DAY else month_left
            raise QuotaExceeded(
                f"{whose} budget of {limit} {what} is spent; it renews at the start of the "
                f"next UTC {'day' if verdict.refused == DAY else 'month'}",
                retry_after=math.ceil(ends),
            )
        if self.metrics is not None:
            self.metrics.request(identity.tenant, "rate_limited")
        retry_s = max(1, math.ceil(verdict.retry_after_ms / 1000))
        raise RateLimited(
            f"rate limit reached for {whose} {what} (limit {limit}); retry in {retry_s}s",
            code="rate_limit_exceeded",
            retry_after=retry_s,
        )

    def _settle(self, ticket: Ticket, charge: Charge) -> None:
        if not ticket._admitted_ok():
            return  # refused, or never answered: nothing was taken or counted
        identity = ticket.identity
        if self.metrics is not None:
            self.metrics.charged(identity.tenant, charge.prompt_tokens, charge.completion_tokens)
        task = asyncio.ensure_future(self._settle_call(ticket, charge))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _settle_call(self, ticket: Ticket, charge: Charge) -> None:
        identity = ticket.identity
        key = identity.key_id if identity.kind == "key" else identity.kind
        day, month, _, _ = _utc_day_month()
        try:
            # A ticket that was not checked (a background job's) is logged as a request now.
            unchecked = ticket._admission is None
            await self.limits.settle(
                identity.tenant, key, ticket.rules, ticket.id, charge, day, month, unchecked
            )
        except AgentdError as exc:
            # The slot ends with its lease; the charge and usage of this request are lost.
            log.debug("limits: settle of %s failed: %s", identity.who, exc)

    async def close(self) -> None:
        """Let the settles on their way end (a worker that drains)."""
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)


def _limit_of(limits: LimitsConfig, refused: str) -> int:
    return {
        "requests": limits.requests_per_minute,
        "tokens": limits.tokens_per_minute,
        "concurrency": limits.max_concurrent_turns,
        DAY: limits.tokens_per_day,
        MONTH: limits.tokens_per_month,
    }[refused]
