"""The response cache: L1 (this worker's memory) → L2 (Redis) → L3 (local disk) → the
model, with single-flight so identical requests in flight at once cost one model call.

:meth:`ResponseCache.get` is the one entry point: a caller gets either the cached reply
or the stream of the reply being produced, and where it came from; the order of the
levels (``tiers``) and the sharing of a production (``flight``) stay in here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from ..config import AgentCacheConfig, CacheConfig
from ..metrics import Metrics
from ..store import Blobs
from .flight import Flights, Produce
from .reply import CachedReply, Served, cacheable
from .tiers import Tiers

__all__ = ("CachedReply", "Produce", "ResponseCache", "Served", "cacheable")


class ResponseCache:
    def __init__(self, config: CacheConfig, blobs: Blobs, metrics: Metrics | None = None) -> None:
        self.tiers = Tiers(config, blobs, metrics)
        self.flights = Flights(config, self.tiers)
        self.l1 = self.tiers.l1

    async def start(self) -> None:
        await self.tiers.start()

    async def close(self) -> None:
        await self.tiers.close()

    def l1_text(self, key: bytes) -> CachedReply | None:
        """What :meth:`get` answers at once from the L1 (``hit-l1``) when it is text
        alone, for a caller that replays it itself; None: ask :meth:`get`."""
        return self.tiers.l1_text(key)

    async def get(
        self, key: bytes, policy: AgentCacheConfig, produce: Produce, deadline: float
    ) -> tuple[CachedReply | AsyncIterator[str | list[dict[str, Any]] | Served], str]:
        """The reply for ``key`` and where it comes from: a cached :class:`CachedReply`
        (``hit-l1``, ``hit-l2``, ``hit-l3``), or on a ``miss`` its text chunks (and lists
        of tool call pieces) as ``produce()`` (shared by every identical request in
        flight) makes them, ending with a :class:`Served`. An L1 hit returns without suspending."""
        served = await self.tiers.lookup(key, policy)
        if served is not None:
            return served.reply, served.level
        return self.flights.serve(key, policy, produce, deadline), "miss"

    async def clear(self) -> int:
        """Empty every level, here and (through the store) in every worker."""
        return await self.tiers.clear()

    def report_sizes(self) -> None:
        """Publish the levels' sizes (called when /metrics is scraped)."""
        self.tiers.report_sizes()
