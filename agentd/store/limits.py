"""The rate limiter's state: the contract of ``Store.limits`` and the data it exchanges.

A caller's limits are checked in *scopes*: its tenant (``"t"``) and, for an API key,
the key (``"k:KEYID"``). Every scope of one tenant lives under the tenant's hash tag
(:func:`agentd.store.keys.limit_keys`), so checking all of them is one atomic call (one
Lua script, one round trip) on one shard, on one Redis, client-side shards or a Redis
Cluster alike. The memory (:mod:`.memory.limits`) and Redis (:mod:`.redis.limits`)
implementations keep the same state with the same algorithms (docs/auth.md):

- requests per minute: a sliding log of the last 60 s of admitted requests (at most N in
  any 60 s window; a burst of N when the window is empty);
- tokens per minute: a bucket of N tokens refilled at N per minute, charged after the
  turn (it may go below zero); admission waits for it to be above zero;
- turns at once: a set of slots, each a lease that its turn renews and releases, and
  that expires by itself when the turn's worker dies;
- tokens per UTC day and month: counters of the scope's current day and month.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..config import LimitsConfig

__all__ = (
    "CONCURRENCY",
    "DAY",
    "MONTH",
    "REFUSALS",
    "REQUESTS",
    "TOKENS",
    "USAGE_FIELDS",
    "WINDOW_MS",
    "Charge",
    "Limits",
    "Rule",
    "Verdict",
    "Window",
    "usage_of",
)

# The window of the per-minute limits.
WINDOW_MS = 60_000

# Why a request was refused (Verdict.refused), in the order they are checked.
DAY, MONTH, CONCURRENCY, REQUESTS, TOKENS = "day", "month", "concurrency", "requests", "tokens"
REFUSALS = ("", DAY, MONTH, CONCURRENCY, REQUESTS, TOKENS)

# The counters of a usage record, per tenant and per key per UTC day: requests, prompt
# tokens, completion tokens, cache hits.
USAGE_FIELDS = ("requests", "prompt_tokens", "completion_tokens", "cache_hits")


@dataclass(frozen=True, slots=True)
class Rule:
    """One scope's limits: ``"t"`` (the tenant) or ``"k:KEYID"`` (an API key)."""

    scope: str
    limits: LimitsConfig


@dataclass(frozen=True, slots=True)
class Window:
    """Where a per-minute limit stands after an admission (for OpenAI's headers)."""

    limit: int
    remaining: int
    # Milliseconds until the limit is back to its initial state.
    reset_ms: int


@dataclass(frozen=True, slots=True)
class Verdict:
    """An admission's answer: admitted (``refused == ""``) or why not, and where each
    per-minute limit stands (the tightest scope's, None where no scope has one)."""

    refused: str = ""
    # The scope that refused (a Rule.scope).
    scope: str = ""
    retry_after_ms: int = 0
    requests: Window | None = None
    tokens: Window | None = None


@dataclass(frozen=True, slots=True)
class Charge:
    """What a finished turn costs: ``tokens`` against the limits, and its usage record."""

    tokens: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_hit: bool = False


class Limits(abc.ABC):
    """Rate limits, quotas and usage counters, per tenant (``Store.limits``)."""

    @abc.abstractmethod
    async def admit(
        self,
        tenant: str,
        rules: Sequence[Rule],
        ticket: str,
        lease_ms: int,
        day: str,
        month: str,
    ) -> Verdict:
        """Check every rule and, if all allow it, count the request and take a turn slot
        held by ``ticket`` for ``lease_ms`` (where a rule limits turns at once); nothing
        is written when one refuses. ``day`` (``YYYYMMDD``) and ``month`` (``YYYYMM``)
        are the current UTC ones."""

    @abc.abstractmethod
    async def renew(self, tenant: str, rules: Sequence[Rule], ticket: str, lease_ms: int) -> None:
        """Extend the turn slots ``ticket`` holds by ``lease_ms`` from now."""

    @abc.abstractmethod
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
        """The end of a request, in one call: charge its tokens to every rule's bucket and
        day and month counters, release the slots ``ticket`` holds, and add it to the
        tenant's and the key's (``key``) usage of ``day``. ``log_request``: also count it
        in the requests per minute (a request :meth:`admit` never saw: a background
        job's, admitted when it was queued)."""

    @abc.abstractmethod
    async def usage(self, tenant: str, days: Sequence[str]) -> dict[str, dict[str, int]]:
        """The tenant's usage records of ``days``: ``{day: {field: n}}``, where a field is
        one of :data:`USAGE_FIELDS` (the tenant's totals) or ``KEY/FIELD`` (one key's);
        days without usage are left out."""

    @abc.abstractmethod
    async def tenants(self, days: Sequence[str]) -> list[str]:
        """Every tenant with usage on one of ``days``, sorted."""


def usage_of(record: Mapping[str, int]) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """A day's usage record as (the tenant's totals, each key's)."""
    totals = {f: int(record.get(f, 0)) for f in USAGE_FIELDS}
    keys: dict[str, dict[str, int]] = {}
    for name, value in record.items():
        key, sep, counter = name.rpartition("/")
        if sep and counter in USAGE_FIELDS:
            keys.setdefault(key, dict.fromkeys(USAGE_FIELDS, 0))[counter] = int(value)
    return totals, keys
