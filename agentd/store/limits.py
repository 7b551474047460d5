"""The rate limiter's state: the contract of ``Store.limits`` and the data it exchanges.

A caller's limits are checked in *scopes*: its tenant (``"t"``) and, for an API key,
the key (``"k:KEYID"``). Every scope of one tenant lives under the tenant's hash tag
(:func:`agentd.store.keys.limit_keys`), so checking all of them is one atomic call (one
Lua script, one round trip) on one shard, on one Redis, client-side shards or a Redis
Cluster alike. One call (:meth:`Limits.step`) carries a worker's whole batch for a
tenant: the admissions asked in one event-loop tick, and the releases, renewals, charges
and usage gathered since the last call. The memory (:mod:`.memory.limits`) and Redis
(:mod:`.redis.limits`) implementations keep the same state with the same algorithms
(docs/auth.md):

- requests per minute: a log of admitted requests counted in buckets of
  :data:`BUCKET_MS`; a request is admitted while the buckets that may hold a request of
  the last 60 s hold fewer than N (at most N in any 60 s window; a burst of N when the
  window is empty; a place frees up to one bucket after 60 s), and the log never holds
  more than :data:`BUCKETS` + 1 counters, whatever N;
- tokens per minute: a bucket of N tokens refilled at N per minute, charged after the
  turn (it may go below zero); admission waits for it to be above zero;
- turns at once: a set of slots, each a lease that its turn renews and releases, and
  that expires by itself when the turn's worker dies;
- tokens per UTC day and month: counters of the scope's current day and month.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..config import LimitsConfig

__all__ = (
    "AHEAD",
    "BUCKETS",
    "BUCKET_MS",
    "CONCURRENCY",
    "DAY",
    "LEASE_MS",
    "MONTH",
    "REFUSALS",
    "REQUESTS",
    "TOKENS",
    "USAGE_FIELDS",
    "WINDOW_MS",
    "Ask",
    "Batch",
    "Charge",
    "Grant",
    "LeaseAsk",
    "Limits",
    "Rule",
    "Verdict",
    "Window",
    "usage_of",
)

# The window of the per-minute limits.
WINDOW_MS = 60_000
# The requests log's granularity: a bucket of BUCKET_MS counts the requests admitted in
# it; BUCKETS of them make the window. A check counts BUCKETS + 1 buckets (the current
# one and every one that may hold a request of the last WINDOW_MS), so a place frees
# between WINDOW_MS and WINDOW_MS + BUCKET_MS after its request.
BUCKET_MS = 100
BUCKETS = WINDOW_MS // BUCKET_MS
# A worker's lease of request places (:meth:`Limits.lease`) may be used for LEASE_MS
# after it was asked, so its places are logged AHEAD buckets after the current one: the
# log counts them in every window that may hold one of their requests. A multiple of
# BUCKET_MS.
LEASE_MS = 500
AHEAD = LEASE_MS // BUCKET_MS

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


@dataclass(frozen=True, slots=True)
class Ask:
    """One admission asked: the rules to check, and the ticket that holds the turn slots
    it takes."""

    rules: Sequence[Rule]
    ticket: str


@dataclass(slots=True)
class Batch:
    """What a worker's ended and running requests leave to write for one tenant, summed
    since its last call; written before the call's admissions are checked."""

    # (scope, ticket): turn slots to free, and slots to extend by the lease.
    released: list[tuple[str, str]] = field(default_factory=list)
    renewed: list[tuple[str, str]] = field(default_factory=list)
    # scope → [its tokens/min limit, tokens to charge] (to its bucket, day and month).
    charged: dict[str, list[int]] = field(default_factory=dict)
    # scope → [its requests/min limit, requests to log without a check: background
    # jobs', admitted when they were queued].
    logged: dict[str, list[int]] = field(default_factory=dict)
    # The day's usage record: field → count (:data:`USAGE_FIELDS`, ``KEY/FIELD``).
    usage: dict[str, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.released or self.renewed or self.charged or self.logged or self.usage)


@dataclass(frozen=True, slots=True)
class LeaseAsk:
    """One scope's part of a worker's lease call: request places to reserve, the
    unused places of its expired leases to give back, and the size its block of turn
    slots should have (its members ``BLOCK0`` … of the call's block name; grown as far
    as the limit has room, shrunk at once)."""

    scope: str
    limits: LimitsConfig
    places: int = 0
    # (bucket, places): unused places of expired leases, logged in that bucket.
    returned: tuple[tuple[int, int], ...] = ()
    slots: int = 0
    # The block's size before the call, and whether to extend every member's lease.
    held: int = 0
    renew: bool = False
    # Whether the block's members are unknown (a call's answer was lost): all of
    # them (up to ``held``) are removed and the block is granted anew.
    rebuild: bool = False


@dataclass(frozen=True, slots=True)
class Grant:
    """What a lease call gave one scope, and where the scope stands."""

    # Request places reserved (logged in ``bucket``), and the log's count after them.
    places: int = 0
    bucket: int = 0
    total: int = 0
    # Milliseconds until the log is empty again if nothing else is admitted.
    reset_ms: int = 0
    # The block of turn slots the worker now holds.
    slots: int = 0
    # The token bucket's level (-1: no tokens limit), today's and this month's tokens.
    level: int = -1
    day_tokens: int = 0
    month_tokens: int = 0


class Limits(abc.ABC):
    """Rate limits, quotas and usage counters, per tenant (``Store.limits``)."""

    @abc.abstractmethod
    async def step(
        self,
        tenant: str,
        asks: Sequence[Ask],
        batch: Batch,
        lease_ms: int,
        day: str,
        month: str,
    ) -> list[Verdict]:
        """One atomic step on the tenant's limits: write ``batch`` (free and extend its
        slots, charge its tokens, log its requests, count its usage in ``day``'s record),
        then check each ask in order; one that every rule allows is logged and takes a
        turn slot held by its ticket for ``lease_ms`` (where a rule limits turns at
        once), one that a rule refuses writes nothing. ``day`` (``YYYYMMDD``) and
        ``month`` (``YYYYMM``) are the current UTC ones. One verdict per ask."""

    async def lease(
        self,
        tenant: str,
        asks: Sequence[LeaseAsk],
        block: str,
        lease_ms: int,
        day: str,
        month: str,
    ) -> list[Grant] | None:
        """One atomic call reserving a worker's leases on ``tenant``'s scopes: give back
        each ask's returned places, reserve up to its ``places`` (as many as its
        requests-per-minute limit has room for, logged :data:`AHEAD` buckets ahead),
        and resize its block of turn slots (``block`` + index, each a slot held for
        ``lease_ms``) towards ``slots``, as far as its limit has room for.
        None: this store grants no leases (every admission is a :meth:`step`)."""
        return None

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
