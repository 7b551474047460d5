"""The limiter's state in Redis: every scope of a tenant on the tenant's slot, each step
one script (:mod:`.limit_scripts`), so one round trip whatever the number of scopes and
of requests in the batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...config import LimitsConfig
from ...errors import StoreUnavailable
from .. import keys as K
from ..limits import REFUSALS, Ask, Batch, Grant, LeaseAsk, Limits, Verdict, Window
from . import limit_scripts as L
from .lease_script import LEASE
from .shards import UNAVAILABLE_ERRORS, Shards

__all__ = ("USAGE_TTL_S", "RedisLimits")

# A usage record is kept this long (the usage API reads at most a year back).
USAGE_TTL_S = 400 * 86400
# A scope's state (its bucket, day and month counters) outlives a month of silence.
STATE_TTL_MS = 32 * 86400 * 1000

NO_LIMITS = LimitsConfig()
_NONE = (0, 0)


def _window(limit: int, remaining: int, reset: int) -> Window | None:
    return None if limit < 0 else Window(limit, remaining, reset)


class RedisLimits(Limits):
    def __init__(self, shards: Shards) -> None:
        self.shards = shards

    async def step(
        self,
        tenant: str,
        asks: Sequence[Ask],
        batch: Batch,
        lease_ms: int,
        day: str,
        month: str,
    ) -> list[Verdict]:
        # Every scope the call touches, numbered from 1 in the script, with its limits
        # (an ask's rules carry them; a scope only freed or renewed has none to check).
        index: dict[str, int] = {}
        limits: list[LimitsConfig] = []

        def number(scope: str, lim: LimitsConfig = NO_LIMITS) -> int:
            found = index.get(scope)
            if found is None:
                found = index[scope] = len(limits) + 1
                limits.append(lim)
            elif lim is not NO_LIMITS:
                limits[found - 1] = lim
            return found

        # An ask without rules has nothing to check: admitted here, not sent.
        tail = " ".join(
            f"{ask.ticket} {','.join(str(number(r.scope, r.limits)) for r in ask.rules)}"
            for ask in asks
            if ask.rules
        )
        slots = [
            " ".join(f"{number(scope)} {ticket}" for scope, ticket in pairs)
            for pairs in (batch.released, batch.renewed)
        ]
        for scope in (*batch.charged, *batch.logged):
            number(scope)
        usage: list[Any] = [len(batch.usage)]
        for name, n in batch.usage.items():
            usage += [name, n]
        keys: list[str] = []
        args: list[Any] = [lease_ms, day, month, len(limits), STATE_TTL_MS, USAGE_TTL_S]
        for scope, lim in zip(index, limits, strict=True):
            keys += K.limit_keys(tenant, scope)
            args += [
                lim.requests_per_minute or batch.logged.get(scope, _NONE)[0],
                lim.tokens_per_minute or batch.charged.get(scope, _NONE)[0],
                lim.max_concurrent_turns,
                lim.tokens_per_day,
                lim.tokens_per_month,
                batch.charged.get(scope, _NONE)[1],
                batch.logged.get(scope, _NONE)[1],
            ]
        keys.append(K.usage_key(tenant, day))
        out = await self.shards.eval(L.STEP, keys, [*args, *slots, *usage, tail])
        verdicts = []
        i = 0
        for ask in asks:
            if not ask.rules:
                verdicts.append(Verdict())
                continue
            # Integer replies: ints already.
            why, by, wait, rl, rr, rs, tl, tr, ts = out[i : i + 9]
            i += 9
            verdicts.append(
                Verdict(
                    REFUSALS[why],
                    ask.rules[by - 1].scope if why else "",
                    wait,
                    _window(rl, rr, rs),
                    _window(tl, tr, ts),
                )
            )
        return verdicts

    async def lease(
        self,
        tenant: str,
        asks: Sequence[LeaseAsk],
        block: str,
        lease_ms: int,
        day: str,
        month: str,
    ) -> list[Grant] | None:
        keys: list[str] = []
        args: list[Any] = [lease_ms, day, month, len(asks), block]
        for ask in asks:
            lim = ask.limits
            keys += K.limit_keys(tenant, ask.scope)
            args += [
                lim.requests_per_minute,
                lim.tokens_per_minute,
                lim.max_concurrent_turns,
                lim.tokens_per_day,
                lim.tokens_per_month,
                ask.places,
                " ".join(f"{bucket} {n}" for bucket, n in ask.returned),
                ask.slots,
                ask.held,
                "2" if ask.rebuild else "1" if ask.renew else "0",
            ]
        out = await self.shards.eval(LEASE, keys, args)
        return [Grant(*out[i : i + 8]) for i in range(0, len(out), 8)]

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
