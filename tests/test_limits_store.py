"""The limiter's state (``Store.limits``) on every store topology: the same answers from
memory, one Redis, client-side shards and a Redis Cluster."""

from __future__ import annotations

import asyncio
import secrets

from agentd.config import LimitsConfig
from agentd.store import Store
from agentd.store.limits import (
    CONCURRENCY,
    DAY,
    MONTH,
    REQUESTS,
    TOKENS,
    Charge,
    Rule,
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


async def admit(store: Store, scoped: list[Rule], held: str | None = None, tenant: str = "acme"):
    return await store.limits.admit(tenant, scoped, held or ticket(), LEASE_MS, DAY_1, MONTH_1)


async def test_requests_per_minute_admits_a_burst_of_exactly_n(store: Store) -> None:
    scoped = rules(key=LimitsConfig(requests_per_minute=7))
    verdicts = await asyncio.gather(*(admit(store, scoped) for _ in range(20)))
    admitted = [v for v in verdicts if not v.refused]
    assert len(admitted) == 7
    assert sorted(v.requests.remaining for v in admitted if v.requests) == list(range(7))
    refused = [v for v in verdicts if v.refused]
    assert {v.refused for v in refused} == {REQUESTS}
    assert {v.scope for v in refused} == {"k:key1"}
    # A place frees when the first request leaves the minute's window.
    assert all(0 < v.retry_after_ms <= 60_000 for v in refused)
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
    await store.limits.settle("acme", "key1", scoped, first, Charge(150, 100, 50), DAY_1, MONTH_1)
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
    await store.limits.settle("acme", "key1", scoped, a, Charge(), DAY_1, MONTH_1)
    assert not (await admit(store, scoped)).refused


async def test_a_slot_not_renewed_expires(store: Store) -> None:
    scoped = rules(tenant=LimitsConfig(max_concurrent_turns=1))
    held = ticket()
    await store.limits.admit("acme", scoped, held, 300, DAY_1, MONTH_1)
    assert (await admit(store, scoped)).refused == CONCURRENCY
    await wait_until(lambda: _admitted(store, scoped), what="the slot's lease to end")


async def test_renewing_keeps_the_slot(store: Store) -> None:
    scoped = rules(tenant=LimitsConfig(max_concurrent_turns=1))
    held = ticket()
    await store.limits.admit("acme", scoped, held, 500, DAY_1, MONTH_1)
    await store.limits.renew("acme", scoped, held, LEASE_MS)
    await asyncio.sleep(0.7)  # past the first lease: only the renewal can hold the slot
    assert (await admit(store, scoped)).refused == CONCURRENCY


async def _admitted(store: Store, scoped: list[Rule]) -> bool:
    verdict = await store.limits.admit("acme", scoped, ticket(), 100, DAY_1, MONTH_1)
    return not verdict.refused


async def test_day_and_month_budgets(store: Store) -> None:
    day = rules(key=LimitsConfig(tokens_per_day=100))
    held = ticket()
    await admit(store, day, held)
    await store.limits.settle("acme", "key1", day, held, Charge(100, 60, 40), DAY_1, MONTH_1)
    assert (await admit(store, day)).refused == DAY
    # The next day starts with nothing spent.
    fresh = await store.limits.admit("acme", day, ticket(), LEASE_MS, "20261130", MONTH_1)
    assert not fresh.refused
    month = rules(key=LimitsConfig(tokens_per_month=100))
    assert (await admit(store, month)).refused == MONTH
    assert not (await store.limits.admit("acme", month, ticket(), 1, "20261201", "202612")).refused


async def test_usage_is_counted_per_tenant_and_key(store: Store) -> None:
    scoped: list[Rule] = []
    for key, hit in (("key1", False), ("key1", True), ("key2", False)):
        await store.limits.settle(
            "acme", key, scoped, ticket(), Charge(15, 10, 5, hit), DAY_1, MONTH_1
        )
    await store.limits.settle("bravo", "", scoped, ticket(), Charge(3, 2, 1), "20261128", MONTH_1)
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


async def test_a_settle_may_log_a_request_admit_never_saw(store: Store) -> None:
    # A background job's: it counts toward the requests per minute when it runs.
    scoped = rules(tenant=LimitsConfig(requests_per_minute=2))
    await store.limits.settle("acme", "", scoped, ticket(), Charge(), DAY_1, MONTH_1, True)
    await store.limits.settle("acme", "", scoped, ticket(), Charge(), DAY_1, MONTH_1, False)
    assert [(await admit(store, scoped)).refused for _ in range(2)] == ["", REQUESTS]


async def test_the_memory_sweep_forgets_old_usage_and_idle_scopes() -> None:
    from agentd.store.memory.limits import MemoryLimits

    limits = MemoryLimits()
    quota = rules(key=LimitsConfig(tokens_per_month=100))
    await limits.settle("acme", "k", quota, ticket(), Charge(50, 25, 25), "20250101", "202501")
    await limits.settle("acme", "k", quota, ticket(), Charge(100, 50, 50), DAY_1, MONTH_1)
    limits.sweep(DAY_1)
    assert list(await limits.usage("acme", ["20250101", DAY_1])) == [DAY_1]
    # This month's charges are kept: the budget is spent.
    assert (await limits.admit("acme", quota, ticket(), 1, DAY_1, MONTH_1)).refused == MONTH
    limits.sweep("20261201")
    assert not (await limits.admit("acme", quota, ticket(), 1, "20261201", "202612")).refused
    assert await limits.usage("acme", [DAY_1]) != {}
