"""The limiter's state (``Store.limits``) on every store topology: the same answers from
memory, one Redis, client-side shards and a Redis Cluster."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from agentd.config import LimitsConfig
from agentd.store import Store
from agentd.store.limits import (
    BUCKET_MS,
    CONCURRENCY,
    DAY,
    MONTH,
    REQUESTS,
    TOKENS,
    WINDOW_MS,
    Ask,
    Batch,
    Rule,
    Verdict,
    usage_of,
)

from .waiting import wait_until

DAY_1, MONTH_1 = "20261129", "202611"
LEASE_MS = 30_000


def ticket() -> str:
    return secrets.token_hex(8)


def rules(key: LimitsConfig | None = None, tenant: LimitsConfig | None = None) -> list[Rule]:
    found = []
    if key is not None:
        found.append(Rule("k:key1", key))
    if tenant is not None:
        found.append(Rule("t", tenant))
    return found


async def admit(
    store: Store,
    scoped: list[Rule],
    held: str | None = None,
    tenant: str = "acme",
    lease_ms: int = LEASE_MS,
    day: str = DAY_1,
    month: str = MONTH_1,
) -> Verdict:
    asks = [Ask(scoped, held or ticket())]
    [verdict] = await store.limits.step(tenant, asks, Batch(), lease_ms, day, month)
    return verdict


async def write(
    store: Store, batch: Batch, tenant: str = "acme", day: str = DAY_1, month: str = MONTH_1
) -> None:
    assert await store.limits.step(tenant, [], batch, LEASE_MS, day, month) == []


def charge(scoped: list[Rule], tokens: int) -> Batch:
    """A batch charging ``tokens`` to every scope of ``scoped``."""
    return Batch(charged={r.scope: [r.limits.tokens_per_minute, tokens] for r in scoped})


def release(scoped: list[Rule], held: str) -> Batch:
    return Batch(released=[(r.scope, held) for r in scoped])


async def test_requests_per_minute_admits_a_burst_of_exactly_n(store: Store) -> None:
    scoped = rules(key=LimitsConfig(requests_per_minute=7))
    verdicts = await asyncio.gather(*(admit(store, scoped) for _ in range(20)))
    admitted = [v for v in verdicts if not v.refused]
    assert len(admitted) == 7
    assert sorted(v.requests.remaining for v in admitted if v.requests) == list(range(7))
    refused = [v for v in verdicts if v.refused]
    assert {v.refused for v in refused} == {REQUESTS}
    assert {v.scope for v in refused} == {"k:key1"}
    # A place frees when the first request's bucket leaves the minute's window.
    assert all(0 < v.retry_after_ms <= WINDOW_MS + BUCKET_MS for v in refused)
    # Another tenant's key of the same id is another scope.
    assert not (await admit(store, scoped, tenant="other")).refused


async def test_the_tighter_of_key_and_tenant_limits_refuses(store: Store) -> None:
    scoped = rules(
        key=LimitsConfig(requests_per_minute=10), tenant=LimitsConfig(requests_per_minute=3)
    )
    verdicts = [await admit(store, scoped) for _ in range(5)]
    assert [v.refused for v in verdicts] == ["", "", "", REQUESTS, REQUESTS]
    assert verdicts[3].scope == "t"
    # The headers report the tighter limit.
    assert verdicts[2].requests is not None and verdicts[2].requests.limit == 3
    assert verdicts[2].requests.remaining == 0


async def test_refused_requests_write_nothing(store: Store) -> None:
    # The tenant refuses: the key's log must not count the refused requests.
    scoped = rules(
        key=LimitsConfig(requests_per_minute=4), tenant=LimitsConfig(requests_per_minute=2)
    )
    for _ in range(5):
        await admit(store, scoped)
    key_only = rules(key=LimitsConfig(requests_per_minute=4))
    assert [(await admit(store, key_only)).refused for _ in range(3)] == ["", "", REQUESTS]


async def test_tokens_per_minute_refuse_once_the_bucket_is_spent(store: Store) -> None:
    scoped = rules(tenant=LimitsConfig(tokens_per_minute=100))
    first = ticket()
    verdict = await admit(store, scoped, first)
    assert not verdict.refused and verdict.tokens is not None
    assert (verdict.tokens.limit, verdict.tokens.remaining) == (100, 100)
    await write(store, charge(scoped, 150))
    refused = await admit(store, scoped)
    assert refused.refused == TOKENS
    # 50 tokens below zero at 100 a minute: back above zero in about 30 s.
    assert 25_000 <= refused.retry_after_ms <= 31_000


async def test_turn_slots_are_held_until_settled(store: Store) -> None:
    scoped = rules(key=LimitsConfig(max_concurrent_turns=2))
    a, b = ticket(), ticket()
    assert not (await admit(store, scoped, a)).refused
    assert not (await admit(store, scoped, b)).refused
    assert (await admit(store, scoped)).refused == CONCURRENCY
    await write(store, release(scoped, a))
    assert not (await admit(store, scoped)).refused


async def test_a_slot_not_renewed_expires(store: Store) -> None:
    scoped = rules(tenant=LimitsConfig(max_concurrent_turns=1))
    held = ticket()
    await admit(store, scoped, held, lease_ms=300)
    assert (await admit(store, scoped)).refused == CONCURRENCY
    await wait_until(lambda: _admitted(store, scoped), what="the slot's lease to end")


async def test_renewing_keeps_the_slot(store: Store) -> None:
    scoped = rules(tenant=LimitsConfig(max_concurrent_turns=1))
    held = ticket()
    await admit(store, scoped, held, lease_ms=500)
    await write(store, Batch(renewed=[(r.scope, held) for r in scoped]))
    await asyncio.sleep(0.7)  # past the first lease: only the renewal can hold the slot
    assert (await admit(store, scoped)).refused == CONCURRENCY


async def _admitted(store: Store, scoped: list[Rule]) -> bool:
    return not (await admit(store, scoped, lease_ms=100)).refused


async def test_day_and_month_budgets(store: Store) -> None:
    day = rules(key=LimitsConfig(tokens_per_day=100))
    held = ticket()
    await admit(store, day, held)
    await write(store, charge(day, 100))
    assert (await admit(store, day)).refused == DAY
    # The next day starts with nothing spent.
    assert not (await admit(store, day, day="20261130")).refused
    month = rules(key=LimitsConfig(tokens_per_month=100))
    assert (await admit(store, month)).refused == MONTH
    assert not (await admit(store, month, day="20261201", month="202612")).refused


async def test_usage_is_counted_per_tenant_and_key(store: Store) -> None:
    for key, hit in (("key1", False), ("key1", True), ("key2", False)):
        counts = {"requests": 1, "prompt_tokens": 10, "completion_tokens": 5, "cache_hits": hit}
        usage = {**counts, **{f"{key}/{name}": n for name, n in counts.items()}}
        await write(store, Batch(usage={k: int(n) for k, n in usage.items() if n}))
    await write(store, Batch(usage={"requests": 1}), tenant="bravo", day="20261128")
    usage = await store.limits.usage("acme", ["20261128", DAY_1])
    assert list(usage) == [DAY_1]
    totals, keys = usage_of(usage[DAY_1])
    assert totals == {"requests": 3, "prompt_tokens": 30, "completion_tokens": 15, "cache_hits": 1}
    assert keys["key1"] == {
        "requests": 2,
        "prompt_tokens": 20,
        "completion_tokens": 10,
        "cache_hits": 1,
    }
    assert keys["key2"]["requests"] == 1
    assert await store.limits.tenants([DAY_1]) == ["acme"]
    assert await store.limits.tenants(["20261128", DAY_1]) == ["acme", "bravo"]


async def test_a_batch_may_log_requests_admit_never_saw(store: Store) -> None:
    # Background jobs': they count toward the requests per minute when they run.
    scoped = rules(tenant=LimitsConfig(requests_per_minute=2))
    await write(store, Batch(logged={"t": [2, 1]}))
    assert [(await admit(store, scoped)).refused for _ in range(2)] == ["", REQUESTS]


async def test_one_step_admits_a_batch_in_order_after_its_writes(store: Store) -> None:
    scoped = rules(
        key=LimitsConfig(requests_per_minute=5, max_concurrent_turns=3),
        tenant=LimitsConfig(max_concurrent_turns=10),
    )
    held = [ticket() for _ in range(3)]
    for one in held:
        assert not (await admit(store, scoped, one)).refused
    # One call: two slots freed, then five asks: two fit in the slots, then the requests
    # log is full (3 + 2 = 5).
    batch = Batch(released=[("k:key1", held[0]), ("k:key1", held[1]), ("t", held[0])])
    asks = [Ask(scoped, ticket()) for _ in range(5)]
    verdicts = await store.limits.step("acme", asks, batch, LEASE_MS, DAY_1, MONTH_1)
    assert [v.refused for v in verdicts] == ["", "", CONCURRENCY, CONCURRENCY, CONCURRENCY]
    assert [v.requests.remaining for v in verdicts if v.requests] == [1, 0, 0, 0, 0]
    assert (await admit(store, scoped)).refused == CONCURRENCY


async def test_the_requests_log_stays_bounded_under_a_huge_limit(store: Store) -> None:
    # A limit of 10^9 a minute, 2,000 requests in a few batches: the log counts them in
    # buckets, never one entry per request.
    scoped = rules(key=LimitsConfig(requests_per_minute=10**9))
    for _ in range(4):
        asks = [Ask(scoped, ticket()) for _ in range(500)]
        verdicts = await store.limits.step("acme", asks, Batch(), LEASE_MS, DAY_1, MONTH_1)
        assert not any(v.refused for v in verdicts)
    last = verdicts[-1].requests
    assert last is not None and last.remaining == 10**9 - 2000
    assert WINDOW_MS < last.reset_ms <= WINDOW_MS + BUCKET_MS
    entries = await _log_entries(store)
    assert 0 < entries <= WINDOW_MS // BUCKET_MS + 3, entries


async def _log_entries(store: Store) -> int:
    """How many entries the key's requests log holds (its fields in Redis, its buckets in
    memory)."""
    from agentd.store.keys import limit_keys
    from agentd.store.memory.limits import MemoryLimits
    from agentd.store.redis.limits import RedisLimits

    limits = store.limits
    if isinstance(limits, MemoryLimits):
        return len(limits._scope("acme", "k:key1").admitted.buckets)
    assert isinstance(limits, RedisLimits)
    log = limit_keys("acme", "k:key1")[1]

    async def count(client: Any) -> int:
        return int(await client.hlen(log))

    return await limits.shards.call(log, count)


async def test_the_memory_sweep_forgets_old_usage_and_idle_scopes() -> None:
    from agentd.store.memory.limits import MemoryLimits

    limits = MemoryLimits()
    quota = rules(key=LimitsConfig(tokens_per_month=100))
    charged = charge(quota, 50)
    await limits.step("acme", [], Batch(usage={"requests": 1}, charged=charged.charged),
                      LEASE_MS, "20250101", "202501")  # fmt: skip
    await limits.step("acme", [], Batch(usage={"requests": 1}, charged=charge(quota, 100).charged),
                      LEASE_MS, DAY_1, MONTH_1)  # fmt: skip
    limits.sweep(DAY_1)
    assert list(await limits.usage("acme", ["20250101", DAY_1])) == [DAY_1]
    # This month's charges are kept: the budget is spent.
    [verdict] = await limits.step("acme", [Ask(quota, ticket())], Batch(), 1, DAY_1, MONTH_1)
    assert verdict.refused == MONTH
    limits.sweep("20261201")
    [verdict] = await limits.step("acme", [Ask(quota, ticket())], Batch(), 1, "20261201", "202612")
    assert not verdict.refused
    assert await limits.usage("acme", [DAY_1]) != {}
