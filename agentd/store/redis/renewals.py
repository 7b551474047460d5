"""Lease renewals (turn leases, job deliveries) over connections of their own.

Under overload every connection of a worker's main pool (``redis.pool_size``) is busy,
and a renewal queued behind ordinary traffic lets its lease lapse: the job is taken over
and retried (some exhaust ``jobs.max_attempts``), the turn loses its session. So each
worker renews over a small pool of its own, CONNECTIONS per server (shard or cluster
node). A renewal is one short script: a worker's renewals wait for each other here, at
most CONNECTIONS at once (a cluster client refuses a command beyond a node's pool at
once instead of waiting, so the bound is kept before it)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from ...config import RedisConfig
from ..scripts import Script
from .shards import Shards

__all__ = ("CONNECTIONS", "Renewals")

CONNECTIONS = 2


class Renewals:
    def __init__(self, config: RedisConfig, main: Shards) -> None:
        """``main``: the worker's main servers (their outages are logged once, by them)."""
        self.shards = Shards(dataclasses.replace(config, pool_size=CONNECTIONS), outages_of=main)
        self._gate = asyncio.Semaphore(CONNECTIONS)

    async def start(self) -> None:
        await self.shards.start()

    async def close(self) -> None:
        await self.shards.close()

    async def eval(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        async with self._gate:
            return await self.shards.eval(script, keys, args)
