"""What a caller refused by its limits is told: the limit by name and size, and when
to retry (the next minute's room, or the next UTC day or month for a budget)."""

from __future__ import annotations

import datetime
import math

from ..config import LimitsConfig
from ..errors import AgentdError, QuotaExceeded, RateLimited
from ..store import DAY, MONTH, Rule, Verdict

__all__ = ("refusal",)

_WHAT = {
    "requests": "requests per minute",
    "tokens": "tokens per minute",
    "concurrency": "turns at once",
    DAY: "tokens per day",
    MONTH: "tokens per month",
}


def _seconds_left() -> tuple[float, float]:
    """Seconds until the current UTC day and month end."""
    return _utc_day_month()[2:]


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


def _limit_of(limits: LimitsConfig, refused: str) -> int:
    return {
        "requests": limits.requests_per_minute,
        "tokens": limits.tokens_per_minute,
        "concurrency": limits.max_concurrent_turns,
        DAY: limits.tokens_per_day,
        MONTH: limits.tokens_per_month,
    }[refused]


def refusal(rule: Rule, verdict: Verdict) -> AgentdError:
    """What a caller refused by ``rule``'s limits is told: which limit, and when to retry."""
    whose = "this API key's" if verdict.scope.startswith("k:") else "the tenant's"
    what = _WHAT[verdict.refused]
    limit = _limit_of(rule.limits, verdict.refused)
    if verdict.refused in (DAY, MONTH):
        day_left, month_left = _seconds_left()
        ends = day_left if verdict.refused == DAY else month_left
        return QuotaExceeded(
            f"{whose} budget of {limit} {what} is spent; it renews at the start of the "
            f"next UTC {'day' if verdict.refused == DAY else 'month'}",
            retry_after=math.ceil(ends),
        )
    retry_s = max(1, math.ceil(verdict.retry_after_ms / 1000))
    return RateLimited(
        f"rate limit reached for {whose} {what} (limit {limit}); retry in {retry_s}s",
        code="rate_limit_exceeded",
        retry_after=retry_s,
    )
