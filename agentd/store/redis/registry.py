"""The service registry in Redis: one hash of entries and one sorted set of last-seen
times, both in one fixed slot (``keys.registry_keys``), so a heartbeat is one script and
a listing of every worker one script, in every layout (one Redis, client-side shards, a
Redis Cluster, Sentinel groups). An entry not renewed for the ttl is skipped by listings
and dropped by the next heartbeat of any worker; both keys expire when every worker is
gone."""

from __future__ import annotations

from .. import keys as K
from ..api import Member, Registry
from . import ops_scripts as O
from .shards import Shards

__all__ = ("RedisRegistry",)

# The keys outlive their last heartbeat by this much (then every worker is long gone).
KEYS_LIFETIME_S = 3600


class RedisRegistry(Registry):
    def __init__(self, shards: Shards) -> None:
        self.shards = shards
        self.keys = list(K.registry_keys())

    async def beat(self, worker_id: str, entry: bytes, ttl_s: float) -> float:
        args = [worker_id, entry, int(ttl_s * 1000), KEYS_LIFETIME_S * 1000]
        now_ms = await self.shards.eval(O.REGISTRY_BEAT, self.keys, args)
        return int(now_ms) / 1000

    async def leave(self, worker_id: str) -> None:
        await self.shards.eval(O.REGISTRY_LEAVE, self.keys, [worker_id])

    async def members(self, ttl_s: float) -> list[Member]:
        flat = await self.shards.eval(
            O.REGISTRY_LIST, self.keys, [int(ttl_s * 1000)], may_repeat=True
        )
        found = [
            Member(flat[i].decode(), int(float(flat[i + 1])) / 1000, flat[i + 2])
            for i in range(1, len(flat), 3)
        ]
        return sorted(found, key=lambda m: m.id)
