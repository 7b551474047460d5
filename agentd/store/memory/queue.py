"""Standalone mode's job queue: the Redis queue's semantics in one process (entries
waiting, then pending with their consumer until acknowledged, reclaimed when idle)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import OrderedDict
from dataclasses import dataclass

from ..api import DEAD_MAXLEN, Delivery, Queue, QueueDepth

__all__ = ("MemoryQueue",)


@dataclass(slots=True)
class _Pending:
    job_id: str
    consumer: str
    touched: float


class _Stream:
    def __init__(self) -> None:
        self.waiting: OrderedDict[str, str] = OrderedDict()  # entry -> job id
        self.pending: dict[str, _Pending] = {}
        self.arrived = asyncio.Event()


class MemoryQueue(Queue):
    def __init__(self) -> None:
        self._streams: dict[tuple[str, int], _Stream] = {}
        # Each partition's dead letters, oldest first: entry id -> (job id, error, attempts).
        self._dead: dict[str, OrderedDict[str, tuple[str, bytes, int]]] = {}
        # Failed attempts put back on each queue shard.
        self._retries: dict[tuple[str, int], int] = {}
        self._ids = itertools.count(1)

    def _stream(self, partition: str, shard: int) -> _Stream:
        stream = self._streams.get((partition, shard))
        if stream is None:
            stream = self._streams[(partition, shard)] = _Stream()
        return stream

    def _entry(self) -> str:
        return f"{int(time.time() * 1000)}-{next(self._ids)}"

    async def enqueue(self, partition: str, shard: int, job_id: str, limit: int) -> bool:
        stream = self._stream(partition, shard)
        if len(stream.waiting) + len(stream.pending) >= limit:
            return False
        stream.waiting[self._entry()] = job_id
        stream.arrived.set()
        return True

    def _delivery(self, partition: str, shard: int, entry: str, job_id: str) -> Delivery:
        return Delivery(partition, shard, entry, job_id, int(entry.split("-")[0]) / 1000)

    async def take(
        self, partition: str, shard: int, consumer: str, count: int, block_s: float
    ) -> list[Delivery]:
        stream = self._stream(partition, shard)
        if not stream.waiting:
            stream.arrived.clear()
            try:
                # asyncio.timeout, not wait_for: no task of its own per blocking read.
                async with asyncio.timeout(block_s):
                    await stream.arrived.wait()
            except TimeoutError:
                return []
        out = []
        now = time.monotonic()
        while stream.waiting and len(out) < count:
            entry, job_id = stream.waiting.popitem(last=False)
            stream.pending[entry] = _Pending(job_id, consumer, now)
            out.append(self._delivery(partition, shard, entry, job_id))
        return out

    async def reclaim(
        self, partition: str, shard: int, consumer: str, idle_s: float, count: int
    ) -> list[Delivery]:
        stream = self._stream(partition, shard)
        now = time.monotonic()
        out = []
        for entry, held in stream.pending.items():
            if len(out) >= count:
                break
            if now - held.touched >= idle_s:
                held.consumer, held.touched = consumer, now
                out.append(self._delivery(partition, shard, entry, held.job_id))
        return out

    async def renew(self, delivery: Delivery, consumer: str) -> bool:
        held = self._stream(delivery.partition, delivery.shard).pending.get(delivery.entry)
        if held is None or held.consumer != consumer:
            return False
        held.touched = time.monotonic()
        return True

    async def ack(self, delivery: Delivery) -> None:
        self._stream(delivery.partition, delivery.shard).pending.pop(delivery.entry, None)

    async def retry(self, delivery: Delivery, *, failed: bool = False) -> None:
        stream = self._stream(delivery.partition, delivery.shard)
        if stream.pending.pop(delivery.entry, None) is not None:
            stream.waiting[self._entry()] = delivery.job_id
            stream.arrived.set()
            if failed:
                where = (delivery.partition, delivery.shard)
                self._retries[where] = self._retries.get(where, 0) + 1

    def _put_dead(self, partition: str, job_id: str, reason: bytes, attempts: int) -> str:
        dead = self._dead.setdefault(partition, OrderedDict())
        entry = self._entry()
        dead[entry] = (job_id, reason, attempts)
        while len(dead) > DEAD_MAXLEN:
            dead.popitem(last=False)
        return entry

    async def bury(self, delivery: Delivery, reason: bytes, attempts: int = 0) -> None:
        self._put_dead(delivery.partition, delivery.job_id, reason, attempts)
        await self.ack(delivery)

    async def depth(self, partition: str, shards: int) -> QueueDepth:
        waiting = running = retries = 0
        oldest = 0.0
        now = time.time()
        for shard in range(shards):
            stream = self._stream(partition, shard)
            waiting += len(stream.waiting)
            running += len(stream.pending)
            retries += self._retries.get((partition, shard), 0)
            if stream.waiting:
                first = next(iter(stream.waiting))
                oldest = max(oldest, now - int(first.split("-")[0]) / 1000)
        dead = len(self._dead.get(partition, ()))
        return QueueDepth(waiting, running, oldest, dead, retries)
