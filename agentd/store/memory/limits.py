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
    CONCURRENCY,
    DAY,
    MONTH,
    REQUESTS,
    TOKENS,
    USAGE_FIELDS,
    WINDOW_MS,
    Charge,
    Limits,
    Rule,
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


@dataclass
class _Scope:
    admitted: deque[int] = field(default_factory=deque)  # ms of each request in the window
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


class MemoryLimits(Limits):
    def __init__(self) -> None:
        self._scopes: dict[tuple[str, str], _Scope] = {}
        self._usage: dict[tuple[str, str], dict[str, int]] = {}

    def _scope(self, tenant: str, scope: str) -> _Scope:
        found = self._scopes.get((tenant, scope))
        if found is None:
            found = self._scopes[(tenant, scope)] = _Scope()
        return found

    async def admit(
        self,
        tenant: str,
        rules: Sequence[Rule],
        ticket: str,
        lease_ms: int,
        day: str,
        month: str,
    ) -> Verdict:
        now = _now_ms()
        refused, by, retry = "", "", 0
        requests: Window | None = None
        tokens: Window | None = None
        for rule in rules:
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
            if lim.requests_per_minute:
                while s.admitted and s.admitted[0] <= now - WINDOW_MS:
                    s.admitted.popleft()
                used = len(s.admitted)
                if used >= lim.requests_per_minute:
                    if not why:
                        # The place frees when enough of the oldest leave the window.
                        why = REQUESTS
                        wait = s.admitted[used - lim.requests_per_minute] + WINDOW_MS - now
                    window = Window(lim.requests_per_minute, 0, s.admitted[-1] + WINDOW_MS - now)
                else:
                    window = Window(lim.requests_per_minute, lim.requests_per_minute - used - 1,
                                    WINDOW_MS)  # fmt: skip
                if requests is None or window.remaining < requests.remaining:
                    requests = window
            if lim.tokens_per_minute:
                per = lim.tokens_per_minute
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
        for rule in rules:
            s, lim = self._scope(tenant, rule.scope), rule.limits
            if lim.requests_per_minute:
                s.admitted.append(now)
            if lim.max_concurrent_turns:
                s.slots[ticket] = now + lease_ms
        return Verdict("", "", 0, requests, tokens)

    async def renew(self, tenant: str, rules: Sequence[Rule], ticket: str, lease_ms: int) -> None:
        now = _now_ms()
        for rule in rules:
            s = self._scopes.get((tenant, rule.scope))
            if s is not None and ticket in s.slots:
                s.slots[ticket] = now + lease_ms

    async def settle(
        self,
        tenant: str,
        key: str,
        rules: Sequence[Rule],
        ticket: str,
        charge: Charge,
        day: str,
        month: str,
        log_request: bool = False,
    ) -> None:
        now = _now_ms()
        for rule in rules:
            s, lim = self._scope(tenant, rule.scope), rule.limits
            s.slots.pop(ticket, None)
            if log_request and lim.requests_per_minute:
                s.admitted.append(now)
            if not charge.tokens:
                continue
            if lim.tokens_per_minute:
                s.level = s.tokens_now(lim.tokens_per_minute, now) - charge.tokens
                s.level_at = now
            if s.day != day:
                s.day, s.day_tokens = day, 0
            if s.month != month:
                s.month, s.month_tokens = month, 0
            s.day_tokens += charge.tokens
            s.month_tokens += charge.tokens
        record = self._usage.setdefault((tenant, day), {})
        counts = (1, charge.prompt_tokens, charge.completion_tokens, int(charge.cache_hit))
        for name, n in zip(USAGE_FIELDS, counts, strict=True):
            record[name] = record.get(name, 0) + n
            if key:
                record[f"{key}/{name}"] = record.get(f"{key}/{name}", 0) + n

    def sweep(self, today: str) -> None:
        """Forget usage records older than Redis keeps them, and the scopes charged in
        no earlier part of this month that hold nothing now (what a fresh one holds)."""
        oldest = _days_before(today, USAGE_DAYS)
        for found in [k for k in self._usage if k[1] < oldest]:
            del self._usage[found]
        now = _now_ms()
        for name, s in list(self._scopes.items()):
            while s.admitted and s.admitted[0] <= now - WINDOW_MS:
                s.admitted.popleft()
            if not s.admitted and not s.live_slots(now) and s.month < today[:6]:
                del self._scopes[name]

    async def usage(self, tenant: str, days: Sequence[str]) -> dict[str, dict[str, int]]:
        return {d: dict(self._usage[(tenant, d)]) for d in days if (tenant, d) in self._usage}

    async def tenants(self, days: Sequence[str]) -> list[str]:
        wanted = set(days)
        return sorted({t for t, d in self._usage if d in wanted})
