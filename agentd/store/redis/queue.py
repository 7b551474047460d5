"""The job queue in Redis: each partition's jobs are spread over ``queue_shards`` streams,
each on its own hash slot, read by one consumer group in which every worker process of
every instance is a consumer. A job is delivered to one consumer and stays pending until
that consumer acknowledges it; a consumer keeps a job by renewing it (resetting its idle
time), and a job idle for longer than the lease is reclaimed by another consumer.
Acknowledged entries are deleted, so a stream's length is the partition's waiting +
running jobs."""

from __future__ import annotations

import time
from typing import Any

from redis import exceptions as rexc

from .. import keys as K
from .. import scripts as L
from ..api import DEAD_MAXLEN, Delivery, Queue, QueueDepth
from ..codec import ms
from .renewals import Renewals
from .shards import Shards, once_more_if_broken

__all__ = ("RedisQueue",)


class RedisQueue(Queue):
    def __init__(self, shards: Shards, waits: Shards, renewals: Renewals) -> None:
        self.shards = shards
        self.waits = waits  # for blocking reads only
        self.renewals = renewals  # for renewals only (see renewals.py)
        # Where each stream's next reclaim goes on looking through its pending entries.
        self._reclaim_from: dict[str, str] = {}

    async def enqueue(self, partition: str, shard: int, job_id: str, limit: int) -> bool:
        stream = K.queue_key(partition, shard)
        return bool(await self.shards.eval(L.ENQUEUE, [stream], [limit, job_id], acked=True))

    def _deliveries(self, partition: str, shard: int, rows: Any) -> list[Delivery]:
        out = []
        for entry_id, fields in rows:
            if not fields:  # deleted while pending
                continue
            entry = entry_id.decode()
            job = fields.get(b"id")
            if job is None:
                continue
            at = int(entry.split("-", 1)[0]) / 1000
            out.append(Delivery(partition, shard, entry, job.decode(), at))
        return out

    async def _ensure_group(self, stream: str) -> None:
        async def create(client: Any) -> None:
            try:
                await client.xgroup_create(stream, K.JOB_GROUP, id="0", mkstream=True)
            except rexc.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

        await self.shards.call(stream, create)

    async def take(
        self, partition: str, shard: int, consumer: str, count: int, block_s: float
    ) -> list[Delivery]:
        stream = K.queue_key(partition, shard)
        # XREADGROUP BLOCK may outlast the socket timeout: bound the block below it, so
        # that a timeout means the server did not answer (a frozen shard), not an idle one.
        block = ms(min(block_s, self.shards.config.timeout * 0.8))

        # A connection broken during the wait (the server's idle timeout spares a blocked
        # reader, but CLIENT KILL does not) is read on again, once, on another one. Safe:
        # what a lost reply delivered stays pending to this consumer, and a reclaim hands
        # it out after the lease, as after any lost reply. A server that died refuses
        # the next connection, and the shard's 503 follows.
        @once_more_if_broken
        async def read(client: Any) -> Any:
            return await client.xreadgroup(
                K.JOB_GROUP, consumer, {stream: ">"}, count=count, block=block
            )

        try:
            reply = await self.waits.call(stream, read)
        except rexc.ResponseError as exc:
            if str(exc).startswith("UNBLOCKED"):
                return []  # the stream moved to another shard while read (agentd reshard)
            if "NOGROUP" not in str(exc):
                raise
            await self._ensure_group(stream)
            return []
        if not reply:
            return []
        rows = reply[0][1] if isinstance(reply, list) else reply[stream.encode()][0]
        return self._deliveries(partition, shard, rows)

    async def reclaim(
        self, partition: str, shard: int, consumer: str, idle_s: float, count: int
    ) -> list[Delivery]:
        stream = K.queue_key(partition, shard)
        start = self._reclaim_from.get(stream, "0-0")

        # XAUTOCLAIM looks at no more than 10 x COUNT pending entries per call. Always
        # starting at the head, a reclaim taking few jobs would never reach a dead
        # worker's job behind many running ones; going on from where the last one
        # stopped (back to the head after the end) looks at every entry in turn.
        async def claim(client: Any) -> Any:
            return await client.xautoclaim(
                stream, K.JOB_GROUP, consumer, ms(idle_s), start, count=count
            )

        try:
            reply = await self.shards.call(stream, claim)
        except rexc.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self._ensure_group(stream)
            return []
        # The reply is (next start, claimed entries[, ids of deleted entries that Redis 7
        # dropped from the pending list: nothing to run]); 0-0 means the end was reached.
        after = reply[0]
        self._reclaim_from[stream] = after.decode() if isinstance(after, bytes) else str(after)
        return self._deliveries(partition, shard, reply[1])

    async def renew(self, delivery: Delivery, consumer: str) -> bool:
        stream = K.queue_key(delivery.partition, delivery.shard)
        args = [consumer, delivery.entry]
        return bool(await self.renewals.eval(L.RENEW_JOB, [stream], args))

    async def ack(self, delivery: Delivery) -> None:
        stream = K.queue_key(delivery.partition, delivery.shard)
        await self.shards.eval(L.ACK_JOB, [stream], [delivery.entry])

    async def retry(self, delivery: Delivery, *, failed: bool = False) -> None:
        keys = [K.queue_key(delivery.partition, delivery.shard)]
        if failed:
            keys.append(K.retries_key(delivery.partition, delivery.shard))
        await self.shards.eval(L.RETRY_JOB, keys, [delivery.entry, delivery.job_id])

    async def bury(self, delivery: Delivery, reason: bytes, attempts: int = 0) -> None:
        dead = K.dead_key(delivery.partition)
        fields = {"id": delivery.job_id, "error": reason, "att": attempts}
        await self.shards.call(
            dead, lambda c: c.xadd(dead, fields, maxlen=DEAD_MAXLEN, approximate=True)
        )
        await self.ack(delivery)

    async def depth(self, partition: str, shards: int) -> QueueDepth:
        waiting = running = retries = 0
        oldest_ms = 0
        for shard in range(shards):
            keys = [K.queue_key(partition, shard), K.retries_key(partition, shard)]
            depth = await self.shards.eval(L.QUEUE_DEPTH, keys, [], may_repeat=True)
            length, pending, first, retried = depth
            retries += int(retried)
            running += int(pending)
            waiting += max(0, int(length) - int(pending))
            if first:
                at = int(first.split(b"-", 1)[0])
                oldest_ms = at if not oldest_ms else min(oldest_ms, at)
        dead_key = K.dead_key(partition)
        dead = await self.shards.call(dead_key, lambda c: c.xlen(dead_key))
        oldest = max(0.0, time.time() - oldest_ms / 1000) if oldest_ms else 0.0
        return QueueDepth(waiting, running, oldest, int(dead), retries)
