"""The response cache: L1 (this worker's memory) → L2 (Redis) → L3 (local disk) → the
model, with single-flight so identical requests in flight at once cost one model call.

A reply is kept with its chunk boundaries, so a cached reply streams like the original.
A hit at a lower level fills the levels above it; a model reply fills all three.

Single-flight works at two scales. In a worker, the first request for a key starts one
producing task and every request for that key — the first included — follows it, so a
client that goes away does not break the others. Across workers and instances, the
producing task first takes a short lock in Redis (``[cache] flight_lease``, renewed while
it runs); the loser tails the winner's chunks from a short-lived Redis stream as they are
generated. If the winner dies, its lock expires and a follower that has not yet passed
any text to its client takes over; one that has fails like a broken upstream stream
(never duplicated or mixed output).

A cache clear (``DELETE /v1/cache``) empties L2 and L3, bumps the cache epoch and tells
every worker through pub/sub to drop its L1. A worker that missed the message notices
the new epoch within ``[cache] l1_max_staleness`` seconds: that is the longest an L1
entry can outlive a clear.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from . import fastpath
from .cache_disk import DiskCache
from .config import AgentCacheConfig, CacheConfig
from .errors import AgentdError, UpstreamError, UpstreamTimeout
from .metrics import Metrics
from .store.blobs import Blobs

__all__ = ("CachedReply", "ResponseCache", "Served", "cacheable")

log = logging.getLogger(__name__)

# How long a follower waits for the next chunk before it checks the leader is alive.
TAIL_BLOCK_S = 1.0


@dataclass(frozen=True, slots=True)
class CachedReply:
    """A whole reply as the model streamed it."""

    chunks: list[str]
    finish_reason: str
    usage: dict[str, Any]
    node: str = ""

    def encode(self) -> bytes:
        return orjson.dumps(
            {"c": self.chunks, "f": self.finish_reason, "u": self.usage, "n": self.node}
        )

    @classmethod
    def decode(cls, data: bytes) -> CachedReply:
        doc = orjson.loads(data)
        return cls(doc["c"], doc["f"], doc["u"], doc.get("n", ""))


@dataclass(frozen=True, slots=True)
class Served:
    """The end of :meth:`ResponseCache.serve`: the reply, and where it came from
    (``hit-l1``, ``hit-l2``, ``hit-l3``, or ``miss`` when a model call made it)."""

    reply: CachedReply
    level: str


def cacheable(policy: AgentCacheConfig, params: dict[str, Any]) -> bool:
    """Whether a request's reply may be cached: never with mode off; with deterministic,
    only at temperature 0 (an absent temperature means the upstream default, not 0)."""
    if policy.mode == "off":
        return False
    if policy.mode == "always":
        return True
    return params.get("temperature") == 0


@dataclass
class _Flight:
    """One key's production in this worker, which every requester of the key follows."""

    chunks: list[str] = field(default_factory=list)
    reply: CachedReply | None = None
    level: str = "miss"
    error: BaseException | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    async def follow(self) -> AsyncIterator[str | Served]:
        seen = 0
        while True:
            while seen < len(self.chunks):
                seen += 1
                yield self.chunks[seen - 1]
            if self.error is not None:
                raise self.error
            if self.reply is not None:
                yield Served(self.reply, self.level)
                return
            await self.changed.wait()


Produce = Callable[[], AsyncIterator[Any]]


class ResponseCache:
    def __init__(self, config: CacheConfig, blobs: Blobs, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.blobs = blobs
        self.l1 = fastpath.LRUCache(config.l1_max_bytes)
        self.l3 = DiskCache(config.disk_path, config.disk_max_bytes) if config.disk_path else None
        self._flights: dict[bytes, _Flight] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._epoch = 0
        self._counters: dict[str, Any] = {}

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

    # -- levels --------------------------------------------------------------------------

    def _count(self, what: str) -> None:
        if self.metrics is None:
            return
        counter = self._counters.get(what)
        if counter is None:
            counter = self._counters[what] = self.metrics.cache_lookups.labels(what)
        counter.inc()

    def report_sizes(self) -> None:
        """Publish the levels' sizes (called when /metrics is scraped)."""
        if self.metrics is not None:
            self.metrics.cache_l1_bytes.set(self.l1.nbytes)
            if self.l3 is not None:
                self.metrics.cache_l3_bytes.set(self.l3.nbytes)

    async def lookup(self, key: bytes, policy: AgentCacheConfig) -> Served | None:
        """L1 → L2 → L3; a hit below fills the levels above. Store trouble is a miss."""
        served = self.lookup_l1(key)
        if served is not None:
            return served
        return await self.lookup_below(key, policy)

    def lookup_l1(self, key: bytes) -> Served | None:
        """L1 alone, without suspending: a hit (counted), or None (nothing counted: ask
        :meth:`lookup_below` next)."""
        served = self.l1.get(key, time.monotonic())
        if served is not None:
            self._count("hit-l1")
        return served  # type: ignore[return-value]

    async def lookup_below(self, key: bytes, policy: AgentCacheConfig) -> Served | None:
        """L2 → L3, after an L1 miss; a hit fills the levels above. Store trouble is a miss."""
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
        self._count(level)
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

    # -- single-flight ---------------------------------------------------------------------

    async def serve(
        self, key: bytes, policy: AgentCacheConfig, produce: Produce, deadline: float
    ) -> AsyncIterator[str | Served]:
        """After a miss: the reply's text chunks as they are produced (by this worker, or
        by whichever process leads the key's flight), then a :class:`Served`."""
        flight = self._flights.get(key)
        if flight is None:
            self._count("miss")
            flight = self._flights[key] = _Flight()
            flight.task = asyncio.create_task(self._fly(key, flight, policy, produce, deadline))
        else:
            self._count("coalesced")
        async for item in flight.follow():
            yield item

    async def _fly(
        self,
        key: bytes,
        flight: _Flight,
        policy: AgentCacheConfig,
        produce: Produce,
        deadline: float,
    ) -> None:
        hexkey, owner, leading = key.hex(), secrets.token_hex(8), False
        try:
            while not await self._lead(hexkey, owner):
                # Another process produces this reply: follow its stream.
                if await self._tail(hexkey, flight, owner, deadline):
                    return
                # Its leader is gone and we passed no text on yet: take over.
            leading = True
            try:
                again = await self.lookup(key, policy)  # it may have just finished
                if again is not None:
                    flight.chunks.extend(again.reply.chunks)
                    flight.reply, flight.level = again.reply, again.level
                    return
                await self._produce(key, flight, owner, policy, produce)
            finally:
                with contextlib.suppress(AgentdError):
                    await self.blobs.release(hexkey, owner)
        except BaseException as exc:
            flight.error = exc if isinstance(exc, Exception) else UpstreamError("cancelled")
            if leading and self.blobs.shared:
                with contextlib.suppress(AgentdError):
                    await self.blobs.emit(hexkey, {"err": str(exc).encode()}, self._ttl())
            if not isinstance(exc, Exception):
                raise
        finally:
            flight.notify()
            self._flights.pop(key, None)

    def _ttl(self) -> float:
        return self.config.flight_lease

    async def _lead(self, hexkey: str, owner: str) -> bool:
        try:
            return await self.blobs.lead(hexkey, owner, self._ttl())
        except AgentdError:
            return True  # the shared level is down: compute here rather than fail

    async def _produce(
        self, key: bytes, flight: _Flight, owner: str, policy: AgentCacheConfig, produce: Produce
    ) -> None:
        hexkey, shared = key.hex(), self.blobs.shared
        renew_at = time.monotonic() + self._ttl() / 3
        finish, usage, node = "stop", {}, ""
        async with contextlib.aclosing(produce()) as stream:
            async for chunk in stream:
                if chunk.text:
                    flight.chunks.append(chunk.text)
                    flight.notify()
                    if shared:
                        with contextlib.suppress(AgentdError):
                            await self.blobs.emit(hexkey, {"t": chunk.text.encode()}, self._ttl())
                finish = chunk.finish_reason or finish
                usage = chunk.usage or usage
                node = chunk.node or node
                if shared and time.monotonic() >= renew_at:
                    renew_at = time.monotonic() + self._ttl() / 3
                    with contextlib.suppress(AgentdError):
                        await self.blobs.renew(hexkey, owner, self._ttl())
        reply = CachedReply(list(flight.chunks), finish, usage, node)
        await self.save(key, reply, policy)
        if shared:
            meta = orjson.dumps({"f": finish, "u": usage, "n": node})
            with contextlib.suppress(AgentdError):
                await self.blobs.emit(hexkey, {"end": meta}, self._ttl())
        flight.reply = reply

    async def _tail(self, hexkey: str, flight: _Flight, owner: str, deadline: float) -> bool:
        """Relay another process's flight; True when it completed, False when its leader
        vanished before we passed any text on (the caller takes over)."""
        after = b"0"
        loop = asyncio.get_running_loop()
        while True:
            if loop.time() > deadline:
                raise UpstreamTimeout("timed out following an identical request")
            entries = await self.blobs.tail(hexkey, after, TAIL_BLOCK_S)
            for entry_id, fields in entries:
                after = entry_id
                if b"t" in fields:
                    flight.chunks.append(fields[b"t"].decode())
                    flight.notify()
                elif b"end" in fields:
                    meta = orjson.loads(fields[b"end"])
                    flight.reply = CachedReply(list(flight.chunks), meta["f"], meta["u"], meta["n"])
                    return True
                elif b"err" in fields:
                    raise UpstreamError(fields[b"err"].decode() or "the shared call failed")
            if entries:
                continue
            if await self.blobs.lead(hexkey, owner, self._ttl()):
                # The lock was free: its holder is gone.
                if flight.chunks:
                    await self.blobs.release(hexkey, owner)
                    raise UpstreamError("the call serving this identical request stopped")
                await self.blobs.release(hexkey, owner)
                return False
