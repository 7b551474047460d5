"""The cache's levels: L1 (this worker's memory), L2 (Redis, through the store's blobs)
and L3 (local disk). A look-up walks them in that order and a hit fills the levels
above it; a saved reply fills all three.

A cache clear (``DELETE /v1/cache``) empties L2 and L3, bumps the cache epoch and tells
every worker through pub/sub to drop its L1. A worker that missed the message notices
the new epoch within ``[cache] l1_max_staleness`` seconds: that is the longest an L1
entry can outlive a clear.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from .. import fastpath
from ..aio import in_task
from ..config import AgentCacheConfig, CacheConfig
from ..errors import AgentdError
from ..metrics import Metrics
from ..store import Blobs
from .disk import DiskCache
from .reply import CachedReply, Served

__all__ = ("Tiers",)


class Tiers:
    def __init__(self, config: CacheConfig, blobs: Blobs, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.blobs = blobs
        self.l1 = fastpath.LRUCache(config.l1_max_bytes)
        self.l3 = DiskCache(config.disk_path, config.disk_max_bytes) if config.disk_path else None
        self._tasks: list[asyncio.Task[None]] = []
        self._epoch = 0

    # -- life cycle --------------------------------------------------------------------

    async def start(self) -> None:
        if self.l3 is not None:
            await self.l3.start()
        if self.blobs.shared:
            with contextlib.suppress(AgentdError):
                self._epoch = await self.blobs.epoch()
            self._tasks.append(asyncio.create_task(self._follow_invalidations()))
            self._tasks.append(asyncio.create_task(self._check_epoch()))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # Bounded: shutting down must not wait on a store that does not answer.
            await asyncio.wait(self._tasks, timeout=1.0)
        if self.l3 is not None:
            await self.l3.close()

    async def _follow_invalidations(self) -> None:
        while True:
            try:
                feed = await self.blobs.invalidations()
            except AgentdError:
                await asyncio.sleep(self.config.l1_max_staleness)
                continue
            if feed is None:
                return
            try:
                while True:
                    await feed.get()  # a clear, or a lost feed: either way drop L1
                    self.l1.clear()
            finally:
                await feed.close()

    async def _check_epoch(self) -> None:
        while True:
            await asyncio.sleep(self.config.l1_max_staleness)
            with contextlib.suppress(AgentdError):
                epoch = await self.blobs.epoch()
                if epoch != self._epoch:
                    self._epoch = epoch
                    self.l1.clear()

    # -- reading and writing -------------------------------------------------------------

    def count(self, what: str) -> None:
        """Count a look-up's outcome in /metrics (``hit-l1`` .. ``miss``, ``coalesced``)."""
        if self.metrics is not None:
            self.metrics.count_lookup(what)

    def report_sizes(self) -> None:
        """Publish the levels' sizes (called when /metrics is scraped)."""
        if self.metrics is not None:
            self.metrics.cache_l1_bytes.set(self.l1.nbytes)
            if self.l3 is not None:
                self.metrics.cache_l3_bytes.set(self.l3.nbytes)

    def l1_text(self, key: bytes) -> CachedReply | None:
        """The L1's fresh reply for ``key`` when it is text alone (no tool calls), counted
        as ``hit-l1``; None otherwise, uncounted (:meth:`lookup` then answers)."""
        served = self.l1.get(key, time.monotonic())
        if served is None or served.reply.tool_calls is not None:
            return None
        self.count("hit-l1")
        return served.reply  # type: ignore[no-any-return]

    async def lookup(self, key: bytes, policy: AgentCacheConfig) -> Served | None:
        """L1 → L2 → L3; a hit below fills the levels above. Store trouble is a miss
        (not counted here: a miss is counted when its reply is produced). An L1 hit
        returns without suspending."""
        served = self.l1.get(key, time.monotonic())
        if served is not None:
            self.count("hit-l1")
            return served  # type: ignore[no-any-return]
        await in_task()  # the front's first step has none; the store's calls need one
        hexkey = key.hex()
        data = None
        level = "hit-l2"
        with contextlib.suppress(AgentdError):
            data = await self.blobs.get(hexkey)
        if data is None and self.l3 is not None:
            level = "hit-l3"
            data = await self.l3.get(hexkey)
            if data is not None:
                with contextlib.suppress(AgentdError):
                    await self.blobs.put(hexkey, data, policy.ttl_s)
        if data is None:
            return None
        self.count(level)
        reply = CachedReply.decode(data)
        self._fill_l1(key, reply, len(data), policy)
        return Served(reply, level)

    def _fill_l1(
        self, key: bytes, reply: CachedReply, nbytes: int, policy: AgentCacheConfig
    ) -> None:
        # L1 holds the hit as it is served (frozen, so shared): a hit costs no parsing and
        # no allocation.
        self.l1.put(key, Served(reply, "hit-l1"), nbytes, time.monotonic() + policy.ttl_s)

    async def save(self, key: bytes, reply: CachedReply, policy: AgentCacheConfig) -> None:
        data = reply.encode()
        if len(data) > policy.max_bytes:
            return
        self._fill_l1(key, reply, len(data), policy)
        hexkey = key.hex()
        with contextlib.suppress(AgentdError):
            await self.blobs.put(hexkey, data, policy.ttl_s)
        if self.l3 is not None:
            await self.l3.put(hexkey, data, policy.ttl_s)

    async def clear(self) -> int:
        """Empty every level, here and (through the store) in every worker."""
        self.l1.clear()
        if self.l3 is not None:
            await self.l3.clear()
        return await self.blobs.clear()
