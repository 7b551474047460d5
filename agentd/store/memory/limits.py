"""Standalone mode's limiter state: one process, the Redis scripts' algorithms.

Each method runs without awaiting, so on one event loop it is atomic, as a script is.
"""

from __future__ import annotations

import datetime
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..limits import (
    BUCKET_MS,
    BUCKETS,
    CONCURRENCY,
    DAY,
    MONTH,
    REQUESTS,
    TOKENS,
    WINDOW_MS,
    Ask,
    Batch,
    Limits,
    Verdict,
    Window,
)

__all__ = ("MemoryLimits",)

# A refused turn slot is worth retrying after this long (slots end when turns do).
SLOT_RETRY_MS = 1000


# Days a usage record is kept (as agentd.store.redis.limits.USAGE_TTL_S).
USAGE_DAYS = 400


def _days_before(day: str, n: int) -> str:
    then = datetime.datetime.strptime(day, "%Y%m%d") - datetime.timedelta(days=n)
    return then.strftime("%Y%m%d")


def _now_ms() -> int:
    return int(time.monotonic() * 1000)


class _Log:
    """Requests admitted per bucket of BUCKET_MS: (bucket, count) oldest first, at most
    BUCKETS + 1 of them, and their sum."""

    __slots__ = ("buckets", "total")

    def __init__(self) -> None:
        self.buckets: deque[list[int]] = deque()
        self.total = 0

    def advance(self, now: int) -> int:
        """Forget the buckets that can hold no request of the last window; the current
        bucket's number."""
        current = now // BUCKET_MS
        while self.buckets and self.buckets[0][0] < current - BUCKETS:
            self.total -= self.buckets.popleft()[1]
        return current

    def add(self, current: int, n: int) -> None:
        if self.buckets and self.buckets[-1][0] == current:
            self.buckets[-1][1] += n
        else:
            self.buckets.append([current, n])
        self.total += n

    def frees_in(self, limit: int, now: int) -> int:
        """Milliseconds until fewer than ``limit`` are counted: enough of the oldest
        buckets have left."""
        leaving = 0
        for bucket, count in self.buckets:
            leaving += count
            if self.total - leaving < limit:
                return (bucket + BUCKETS + 1) * BUCKET_MS - now
        return 0

    def empties_in(self, now: int) -> int:
        """Milliseconds until the newest request has left (the log is back to empty)."""
        return (self.buckets[-1][0] + BUCKETS + 1) * BUCKET_MS - now if self.buckets else 0


@dataclass
class _Scope:
    admitted: _Log = field(default_factory=_Log)
    level: float | None = None  # the token bucket; None: full
    level_at: int = 0
    slots: dict[str, int] = field(default_factory=dict)  # ticket → lease end, ms
    day: str = ""
    day_tokens: int = 0
    month: str = ""
    month_tokens: int = 0

    def tokens_now(self, per_minute: int, now: int) -> float:
        if self.level is None:
            return float(per_minute)
        return min(float(per_minute), self.level + (now - self.level_at) * per_minute / WINDOW_MS)

    def live_slots(self, now: int) -> int:
        for ticket in [t for t, end in self.slots.items() if end <= now]:
            del self.slots[ticket]
        return len(self.slots)

    def charge(self, per_minute: int, tokens: int, day: str, month: str, now: int) -> None:
        if per_minute:
            self.level = self.tokens_now(per_minute, now) - tokens
            self.level_at = now
        if self.day != day:
            self.day, self.day_tokens = day, 0
        if self.month != month:
            self.month, self.month_tokens = month, 0
        self.day_tokens += tokens
        self.month_tokens += tokens


class MemoryLimits(Limits):
    def __init__(self) -> None:
        self._scopes: dict[tuple[str, str], _Scope] = {}
        self._usage: dict[tuple[str, str], dict[str, int]] = {}

    def _scope(self, tenant: str, scope: str) -> _Scope:
        found = self._scopes.get((tenant, scope))
        if found is None:
            found = self._scopes[(tenant, scope)] = _Scope()
        return found

    async def step(
        self,
        tenant: str,
        asks: Sequence[Ask],
        batch: Batch,
        lease_ms: int,
        day: str,
        month: str,
    ) -> list[Verdict]:
        now = _now_ms()
        if batch:
            self._write(tenant, batch, lease_ms, day, month, now)
        return [self._admit(tenant, ask, lease_ms, day, month, now) for ask in asks]

    def _write(
        self, tenant: str, batch: Batch, lease_ms: int, day: str, month: str, now: int
    ) -> None:
        for scope, ticket in batch.released:
            self._scope(tenant, scope).slots.pop(ticket, None)
        for scope, ticket in batch.renewed:
            s = self._scope(tenant, scope)
            if ticket in s.slots:
                s.slots[ticket] = now + lease_ms
        for scope, (per_minute, tokens) in batch.charged.items():
            self._scope(tenant, scope).charge(per_minute, tokens, day, month, now)
        for scope, (_, n) in batch.logged.items():
            log = self._scope(tenant, scope).admitted
            log.add(log.advance(now), n)
        if batch.usage:
            record = self._usage.setdefault((tenant, day), {})
            for name, n in batch.usage.items():
                record[name] = record.get(name, 0) + n

    def _admit(
        self, tenant: str, ask: Ask, lease_ms: int, day: str, month: str, now: int
    ) -> Verdict:
        refused, by, retry = "", "", 0
        requests: Window | None = None
        tokens: Window | None = None
        for rule in ask.rules:
            s, lim = self._scope(tenant, rule.scope), rule.limits
            why, wait = "", 0
            if lim.tokens_per_day and s.day == day and s.day_tokens >= lim.tokens_per_day:
                why = DAY
            elif (
                lim.tokens_per_month and s.month == month and s.month_tokens >= lim.tokens_per_month
            ):
                why = MONTH
            elif lim.max_concurrent_turns and s.live_slots(now) >= lim.max_concurrent_turns:
                why, wait = CONCURRENCY, SLOT_RETRY_MS
            if per := lim.requests_per_minute:
                log = s.admitted
                current = log.advance(now)
                if log.total >= per:
                    if not why:
                        why, wait = REQUESTS, log.frees_in(per, now)
                    window = Window(per, 0, log.empties_in(now))
                else:
                    reset = (current + BUCKETS + 1) * BUCKET_MS - now
                    window = Window(per, per - log.total - 1, reset)
                if requests is None or window.remaining < requests.remaining:
                    requests = window
            if per := lim.tokens_per_minute:
                level = s.tokens_now(per, now)
                if level <= 0 and not why:
                    why, wait = TOKENS, int(-level * WINDOW_MS / per) + 1
                window = Window(per, max(0, int(level)), int((per - level) * WINDOW_MS / per))
                if tokens is None or window.remaining < tokens.remaining:
                    tokens = window
            if why and not refused:
                refused, by = why, rule.scope
            if why:
                retry = max(retry, wait)
        if refused:
            return Verdict(refused, by, retry, requests, tokens)
        for rule in ask.rules:
            s, lim = self._scope(tenant, rule.scope), rule.limits
            if lim.requests_per_minute:
                s.admitted.add(now // BUCKET_MS, 1)
            if lim.max_concurrent_turns:
                s.slots[ask.ticket] = now + lease_ms
        return Verdict("", "", 0, requests, tokens)

    def sweep(self, today: str) -> None:
        """Forget usage records older than Redis keeps them, and the scopes charged in
        no earlier part of this month that hold nothing now (what a fresh one holds)."""
        oldest = _days_before(today, USAGE_DAYS)
        for found in [k for k in self._usage if k[1] < oldest]:
            del self._usage[found]
        now = _now_ms()
        for name, s in list(self._scopes.items()):
            s.admitted.advance(now)
            if not s.admitted.total and not s.live_slots(now) and s.month < today[:6]:
                del self._scopes[name]

    async def usage(self, tenant: str, days: Sequence[str]) -> dict[str, dict[str, int]]:
        return {d: dict(self._usage[(tenant, d)]) for d in days if (tenant, d) in self._usage}

    async def tenants(self, days: Sequence[str]) -> list[str]:
        wanted = set(days)
        return sorted({t for t, d in self._usage if d in wanted})
