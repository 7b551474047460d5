"""The limiter's state in Redis: every scope of a tenant on the tenant's slot, each step
one script (:mod:`.limit_scripts`), so one round trip whatever the number of scopes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...errors import StoreUnavailable
from .. import keys as K
from ..limits import REFUSALS, Charge, Limits, Rule, Verdict, Window
from . import limit_scripts as L
from .shards import UNAVAILABLE_ERRORS, Shards

__all__ = ("USAGE_TTL_S", "RedisLimits")

# A usage record is kept this long (the usage API reads at most a year back).
USAGE_TTL_S = 400 * 86400
# A scope's state (its bucket, day and month counters) outlives a month of silence.
STATE_TTL_MS = 32 * 86400 * 1000


def _tightest(current: Window | None, limit: int, remaining: int, reset: int) -> Window | None:
    if limit < 0:
        return current
    if current is None or remaining < current.remaining:
        return Window(limit, remaining, reset)
    return current


class RedisLimits(Limits):
    def __init__(self, shards: Shards) -> None:
        self.shards = shards

    async def admit(
        self,
        tenant: str,
        rules: Sequence[Rule],
        ticket: str,
        lease_ms: int,
        day: str,
        month: str,
    ) -> Verdict:
        keys: list[str] = []
        args: list[Any] = [ticket, lease_ms, day, month, len(rules)]
        for rule in rules:
            keys += K.limit_keys(tenant, rule.scope)
            lim = rule.limits
            args += [
                lim.requests_per_minute,
                lim.tokens_per_minute,
                lim.max_concurrent_turns,
                lim.tokens_per_day,
                lim.tokens_per_month,
            ]
        out = [int(x) for x in await self.shards.eval(L.ADMIT, keys, args)]
        requests: Window | None = None
        tokens: Window | None = None
        for i in range(len(rules)):
            rl, rr, rs, tl, tr, ts = out[3 + 6 * i : 9 + 6 * i]
            requests = _tightest(requests, rl, rr, rs)
            tokens = _tightest(tokens, tl, tr, ts)
        refused = REFUSALS[out[0]]
        scope = rules[out[1] - 1].scope if refused else ""
        return Verdict(refused, scope, out[2], requests, tokens)

    async def renew(self, tenant: str, rules: Sequence[Rule], ticket: str, lease_ms: int) -> None:
        keys = [K.limit_keys(tenant, r.scope)[2] for r in rules if r.limits.max_concurrent_turns]
        if keys:
            await self.shards.eval(L.RENEW_SLOTS, keys, [ticket, lease_ms])

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
        keys: list[str] = []
        for rule in rules:
            keys += K.limit_keys(tenant, rule.scope)
        keys.append(K.usage_key(tenant, day))
        args: list[Any] = [
            ticket,
            day,
            month,
            len(rules),
            charge.tokens,
            charge.prompt_tokens,
            charge.completion_tokens,
            int(charge.cache_hit),
            key,
            USAGE_TTL_S,
            STATE_TTL_MS,
            int(log_request),
        ]
        for rule in rules:
            args += [rule.limits.requests_per_minute, rule.limits.tokens_per_minute]
        await self.shards.eval(L.SETTLE, keys, args)

    async def usage(self, tenant: str, days: Sequence[str]) -> dict[str, dict[str, int]]:
        if not days:
            return {}
        keys = [K.usage_key(tenant, d) for d in days]

        async def read(client: Any) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.hgetall(key)
            return list(await pipe.execute())

        # One slot (the tenant's): one pipeline, one round trip.
        records = await self.shards.call(keys[0], read)
        return {
            day: {k.decode(): int(v) for k, v in record.items()}
            for day, record in zip(days, records, strict=True)
            if record
        }

    async def tenants(self, days: Sequence[str]) -> list[str]:
        """Every server's usage records, by SCAN (the admin's view: not a hot path)."""
        wanted = set(days)
        found: set[str] = set()
        # The cluster client's SCAN walks every primary.
        servers = [self.shards.cluster] if self.shards.cluster else self.shards.clients
        for server in servers:
            try:
                async for raw in server.scan_iter(match=K.USAGE_PATTERN, count=1000):
                    tag, _, day = raw.decode()[len(K.LIMIT_PREFIX) :].rpartition("}:u:")
                    if day in wanted:
                        found.add(tag[1:])
            except UNAVAILABLE_ERRORS as exc:
                raise StoreUnavailable(f"redis unreachable: {exc}") from exc
        return sorted(found)
