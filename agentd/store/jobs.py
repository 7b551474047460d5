"""The job queue and the response records behind the Responses API's background mode.

Queue: each partition's jobs are spread over ``queue_shards`` streams, each on its own
hash slot, read by one consumer group in which every worker process of every instance
is a consumer. A job is delivered to one consumer and stays pending until that consumer
acknowledges it; a consumer keeps a job by renewing it (resetting its idle time), and a
job idle for longer than the lease is reclaimed by another consumer. Acknowledged
entries are deleted, so a stream's length is the partition's waiting + running jobs.

Records: a response's state is one hash and its events one stream, both tagged with the
response id (one slot). Every write made while running is fenced by the attempt
number that :meth:`Jobs.start` hands out, so a holder that wakes up after its job was
reclaimed cannot overwrite the newer attempt's events or result.

:class:`RedisJobs` keeps all this in the Redis shards (keys and scripts in :mod:`.keys`);
:class:`MemoryJobs` has the same semantics in one process, for standalone mode.
"""

from __future__ import annotations

import abc
import asyncio
import itertools
import math
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis import exceptions as rexc

from . import keys as K
from .base import Subscription
from .pubsub import EventHub
from .shards import Shards

__all__ = (
    "TERMINAL",
    "Delivery",
    "Jobs",
    "MemoryJobs",
    "QueueDepth",
    "RedisJobs",
    "Start",
)

TERMINAL = frozenset({"completed", "failed", "cancelled", "incomplete"})
# What a record's channel carries when the record is deleted (watchers stop).
DELETED = b"deleted"


@dataclass(frozen=True, slots=True)
class Delivery:
    """One delivery of a job to this consumer."""

    partition: str
    shard: int
    entry: str  # the queue entry's id
    job_id: str
    enqueued_at: float  # unix seconds


@dataclass(frozen=True, slots=True)
class Start:
    """What :meth:`Jobs.start` found: ``run`` (attempt ``attempt`` is yours), ``cancel``
    (asked before it ran), ``exhausted`` (out of attempts), ``done`` (already ended:
    ``status``), ``gone`` (no such record)."""

    verdict: str
    attempt: int = 0
    seq: int = 0
    status: str = ""
    record: dict[str, bytes] = field(default_factory=dict)  # as it was when started


@dataclass(frozen=True, slots=True)
class QueueDepth:
    waiting: int
    running: int
    oldest_s: float  # age of the oldest waiting job, 0 when none waits
    dead: int


class Jobs(abc.ABC):
    """The queue and the records, as the runner and the Responses API use them."""

    # -- queue ------------------------------------------------------------------------

    @abc.abstractmethod
    async def enqueue(self, partition: str, shard: int, job_id: str, limit: int) -> bool:
        """Queue a job on one of the partition's streams; False when that stream
        already holds ``limit`` jobs."""

    @abc.abstractmethod
    async def take(
        self, partition: str, shard: int, consumer: str, count: int, block_s: float
    ) -> list[Delivery]:
        """New jobs for ``consumer``, waiting up to ``block_s`` for the first one."""

    @abc.abstractmethod
    async def reclaim(
        self, partition: str, shard: int, consumer: str, idle_s: float, count: int
    ) -> list[Delivery]:
        """Jobs whose holder has not renewed them for ``idle_s``, now ``consumer``'s."""

    @abc.abstractmethod
    async def renew(self, delivery: Delivery, consumer: str) -> bool:
        """Keep holding a job; False when another consumer took it over."""

    @abc.abstractmethod
    async def ack(self, delivery: Delivery) -> None:
        """Done with the job: it leaves the queue."""

    @abc.abstractmethod
    async def retry(self, delivery: Delivery) -> None:
        """Put the job back at the end of its stream (a new delivery) and ack this one."""

    @abc.abstractmethod
    async def bury(self, delivery: Delivery, reason: bytes) -> None:
        """Move the job to the partition's dead-letter stream (with why) and ack it."""

    @abc.abstractmethod
    async def depth(self, partition: str, shards: int) -> QueueDepth: ...

    # -- records ----------------------------------------------------------------------

    @abc.abstractmethod
    async def create(
        self,
        rid: str,
        fields: Mapping[str, bytes],
        ttl_s: int,
        events: Sequence[tuple[int, bytes]] = (),
    ) -> None:
        """Store a new record with its first events (sequence numbers from 0)."""

    @abc.abstractmethod
    async def read(self, rid: str) -> dict[str, bytes] | None: ...

    @abc.abstractmethod
    async def start(self, rid: str, max_attempts: int, consumer: str) -> Start:
        """Begin the job's next attempt (see :class:`Start`); the record notes which
        consumer runs it (``by``)."""

    @abc.abstractmethod
    async def update(self, rid: str, attempt: int, fields: Mapping[str, bytes]) -> bool:
        """Set fields while ``attempt`` is the record's latest; False otherwise."""

    @abc.abstractmethod
    async def emit(self, rid: str, attempt: int, events: Sequence[tuple[int, bytes]]) -> bool:
        """Append (sequence number, event JSON) pairs and publish them, fenced by attempt."""

    @abc.abstractmethod
    async def finish(
        self,
        rid: str,
        attempt: int,
        fields: Mapping[str, bytes],
        events: Sequence[tuple[int, bytes]],
    ) -> bool:
        """Set the final fields and emit the closing events in one step, fenced by
        attempt; False when fenced out or the record already ended."""

    @abc.abstractmethod
    async def cancel_asked(self, rid: str) -> bool:
        """Whether the response was asked to stop (or is gone): a cheap check."""

    @abc.abstractmethod
    async def cancel(self, rid: str) -> str | None:
        """Ask the job to stop (or never start); the record's status, None if absent."""

    @abc.abstractmethod
    async def delete(self, rid: str) -> bool: ...

    @abc.abstractmethod
    async def events(self, rid: str, after: int) -> list[bytes]:
        """Stored events with a sequence number above ``after`` (-1: all)."""

    @abc.abstractmethod
    async def subscribe(self, rid: str) -> Subscription:
        """Live events of the record (raw event JSON; ``b"deleted"`` when deleted)."""


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _fields_flat(fields: Mapping[str, bytes]) -> list[Any]:
    return [x for kv in fields.items() for x in kv]


def _events_flat(events: Sequence[tuple[int, bytes]]) -> list[Any]:
    return [x for seq, payload in events for x in (seq, payload)]


class RedisJobs(Jobs):
    def __init__(self, shards: Shards, hub: EventHub, waits: Shards, events_ttl_s: int) -> None:
        self.shards = shards
        self.hub = hub
        self.waits = waits  # for blocking reads only
        self.events_ttl_s = events_ttl_s

    # -- queue ------------------------------------------------------------------------

    async def enqueue(self, partition: str, shard: int, job_id: str, limit: int) -> bool:
        stream = K.queue_key(partition, shard)
        return bool(await self.shards.eval(K.ENQUEUE, [stream], [limit, job_id]))

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
        # XREADGROUP BLOCK may outlast the socket timeout: bound the block below it.
        block = _ms(min(block_s, self.shards.config.timeout * 0.8))

        async def read(client: Any) -> Any:
            try:
                return await client.xreadgroup(
                    K.JOB_GROUP, consumer, {stream: ">"}, count=count, block=block
                )
            except rexc.TimeoutError:
                return None

        try:
            reply = await self.waits.call(stream, read)
        except rexc.ResponseError as exc:
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

        async def claim(client: Any) -> Any:
            return await client.xautoclaim(
                stream, K.JOB_GROUP, consumer, _ms(idle_s), "0-0", count=count
            )

        try:
            reply = await self.shards.call(stream, claim)
        except rexc.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self._ensure_group(stream)
            return []
        return self._deliveries(partition, shard, reply[1])

    async def renew(self, delivery: Delivery, consumer: str) -> bool:
        stream = K.queue_key(delivery.partition, delivery.shard)
        return bool(await self.shards.eval(K.RENEW_JOB, [stream], [consumer, delivery.entry]))

    async def ack(self, delivery: Delivery) -> None:
        stream = K.queue_key(delivery.partition, delivery.shard)
        await self.shards.eval(K.ACK_JOB, [stream], [delivery.entry])

    async def retry(self, delivery: Delivery) -> None:
        stream = K.queue_key(delivery.partition, delivery.shard)
        await self.shards.eval(K.RETRY_JOB, [stream], [delivery.entry, delivery.job_id])

    async def bury(self, delivery: Delivery, reason: bytes) -> None:
        dead = K.dead_key(delivery.partition)
        fields = {"id": delivery.job_id, "error": reason, "entry": delivery.entry}
        await self.shards.call(
            dead, lambda c: c.xadd(dead, fields, maxlen=K.DEAD_MAXLEN, approximate=True)
        )
        await self.ack(delivery)

    async def depth(self, partition: str, shards: int) -> QueueDepth:
        waiting = running = 0
        oldest_ms = 0
        for shard in range(shards):
            stream = K.queue_key(partition, shard)
            length, pending, first = await self.shards.eval(K.QUEUE_DEPTH, [stream], [])
            running += int(pending)
            waiting += max(0, int(length) - int(pending))
            if first:
                at = int(first.split(b"-", 1)[0])
                oldest_ms = at if not oldest_ms else min(oldest_ms, at)
        dead_key = K.dead_key(partition)
        dead = await self.shards.call(dead_key, lambda c: c.xlen(dead_key))
        oldest = max(0.0, time.time() - oldest_ms / 1000) if oldest_ms else 0.0
        return QueueDepth(waiting, running, oldest, int(dead))

    # -- records ----------------------------------------------------------------------

    async def create(
        self,
        rid: str,
        fields: Mapping[str, bytes],
        ttl_s: int,
        events: Sequence[tuple[int, bytes]] = (),
    ) -> None:
        keys = list(K.record_keys(rid))
        args = [ttl_s, self.shards.publish_command, self.events_ttl_s, len(fields)]
        args += _fields_flat(fields)
        await self.shards.eval(K.RECORD_CREATE, keys, [*args, *_events_flat(events)])

    async def read(self, rid: str) -> dict[str, bytes] | None:
        key = K.record_keys(rid)[0]
        found = await self.shards.call(key, lambda c: c.hgetall(key))
        return {k.decode(): v for k, v in found.items()} if found else None

    async def start(self, rid: str, max_attempts: int, consumer: str) -> Start:
        keys = list(K.record_keys(rid))
        args = [max_attempts, time.time(), consumer]
        reply = await self.shards.eval(K.RECORD_START, keys, args)
        verdict = reply[0].decode()
        if verdict == "gone":
            return Start("gone")
        if verdict == "done":
            return Start("done", status=reply[1].decode())
        flat = reply[3]
        record = {flat[i].decode(): flat[i + 1] for i in range(0, len(flat), 2)}
        return Start(verdict, int(reply[1]), int(reply[2]), record=record)

    async def update(self, rid: str, attempt: int, fields: Mapping[str, bytes]) -> bool:
        keys = list(K.record_keys(rid))
        return bool(await self.shards.eval(K.RECORD_UPDATE, keys, [attempt, *_fields_flat(fields)]))

    async def emit(self, rid: str, attempt: int, events: Sequence[tuple[int, bytes]]) -> bool:
        return await self.finish(rid, attempt, {}, events, closing=False)

    async def finish(
        self,
        rid: str,
        attempt: int,
        fields: Mapping[str, bytes],
        events: Sequence[tuple[int, bytes]],
        *,
        closing: bool = True,
    ) -> bool:
        keys = list(K.record_keys(rid))
        args = [
            attempt,
            self.shards.publish_command,
            self.events_ttl_s,
            1 if closing else 0,
            len(fields),
            *_fields_flat(fields),
            *_events_flat(events),
        ]
        return bool(await self.shards.eval(K.RECORD_WRITE, keys, args))

    async def cancel_asked(self, rid: str) -> bool:
        key = K.record_keys(rid)[0]
        found = await self.shards.call(key, lambda c: c.hmget(key, "cx", "att"))
        return found[0] is not None or found[1] is None

    async def cancel(self, rid: str) -> str | None:
        keys = list(K.record_keys(rid))
        status = await self.shards.eval(K.RECORD_CANCEL, keys, [])
        return status.decode() if status else None

    async def delete(self, rid: str) -> bool:
        keys = list(K.record_keys(rid))
        return bool(
            await self.shards.eval(K.RECORD_DELETE, keys, [self.shards.publish_command, DELETED])
        )

    async def events(self, rid: str, after: int) -> list[bytes]:
        stream = K.record_keys(rid)[1]
        start = f"(0-{after + 1}" if after >= 0 else "-"
        rows = await self.shards.call(stream, lambda c: c.xrange(stream, start, "+"))
        return [fields[b"e"] for _, fields in rows]

    async def subscribe(self, rid: str) -> Subscription:
        return await self.hub.subscribe(K.record_keys(rid)[2])


# -- in process ------------------------------------------------------------------------


class _Feed(Subscription):
    def __init__(self, owner: MemoryJobs, rid: str) -> None:
        super().__init__()
        self._owner, self._rid = owner, rid

    async def close(self) -> None:
        self._owner._feeds.get(self._rid, set()).discard(self)


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


@dataclass(slots=True)
class _Record:
    fields: dict[str, bytes]
    events: list[bytes]
    expires: float
    events_expire: float = math.inf


class MemoryJobs(Jobs):
    """Standalone mode's queue and records: one process, the same semantics."""

    def __init__(self, events_ttl_s: int) -> None:
        self.events_ttl_s = events_ttl_s
        self._streams: dict[tuple[str, int], _Stream] = {}
        self._dead: dict[str, list[tuple[str, bytes]]] = {}
        self._records: dict[str, _Record] = {}
        self._feeds: dict[str, set[_Feed]] = {}
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
                await asyncio.wait_for(stream.arrived.wait(), block_s)
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

    async def retry(self, delivery: Delivery) -> None:
        stream = self._stream(delivery.partition, delivery.shard)
        if stream.pending.pop(delivery.entry, None) is not None:
            stream.waiting[self._entry()] = delivery.job_id
            stream.arrived.set()

    async def bury(self, delivery: Delivery, reason: bytes) -> None:
        dead = self._dead.setdefault(delivery.partition, [])
        dead.append((delivery.job_id, reason))
        del dead[: -K.DEAD_MAXLEN]
        await self.ack(delivery)

    async def depth(self, partition: str, shards: int) -> QueueDepth:
        waiting = running = 0
        oldest = 0.0
        now = time.time()
        for shard in range(shards):
            stream = self._stream(partition, shard)
            waiting += len(stream.waiting)
            running += len(stream.pending)
            if stream.waiting:
                first = next(iter(stream.waiting))
                oldest = max(oldest, now - int(first.split("-")[0]) / 1000)
        return QueueDepth(waiting, running, oldest, len(self._dead.get(partition, ())))

    # -- records ----------------------------------------------------------------------

    def _record(self, rid: str) -> _Record | None:
        record = self._records.get(rid)
        if record is not None and record.expires <= time.monotonic():
            del self._records[rid]
            return None
        return record

    def sweep(self) -> None:
        """Drop expired records (called now and then by the owner)."""
        now = time.monotonic()
        for rid in [r for r, rec in self._records.items() if rec.expires <= now]:
            del self._records[rid]

    async def create(
        self,
        rid: str,
        fields: Mapping[str, bytes],
        ttl_s: int,
        events: Sequence[tuple[int, bytes]] = (),
    ) -> None:
        self.sweep()
        self._records[rid] = _Record(
            {"seq": b"0", "att": b"0", **fields}, [], time.monotonic() + ttl_s
        )
        self._write(rid, 0, {}, events, closing=False)

    async def read(self, rid: str) -> dict[str, bytes] | None:
        record = self._record(rid)
        return None if record is None else dict(record.fields)

    async def start(self, rid: str, max_attempts: int, consumer: str) -> Start:
        record = self._record(rid)
        if record is None:
            return Start("gone")
        f = record.fields
        status = f.get("status", b"").decode()
        if status in TERMINAL:
            return Start("done", status=status)
        attempt, seq = int(f.get("att", b"0")), int(f.get("seq", b"0"))
        if "cx" in f:
            return Start("cancel", attempt, seq, record=dict(f))
        if attempt + 1 > max_attempts:
            return Start("exhausted", attempt, seq, record=dict(f))
        f.update(
            status=b"in_progress",
            att=b"%d" % (attempt + 1),
            started=b"%f" % time.time(),
            by=consumer.encode(),
        )
        return Start("run", attempt + 1, seq, record=dict(f))

    async def update(self, rid: str, attempt: int, fields: Mapping[str, bytes]) -> bool:
        record = self._record(rid)
        if record is None or int(record.fields.get("att", b"0")) != attempt:
            return False
        record.fields.update(fields)
        return True

    async def emit(self, rid: str, attempt: int, events: Sequence[tuple[int, bytes]]) -> bool:
        return self._write(rid, attempt, {}, events, closing=False)

    async def finish(
        self,
        rid: str,
        attempt: int,
        fields: Mapping[str, bytes],
        events: Sequence[tuple[int, bytes]],
    ) -> bool:
        return self._write(rid, attempt, fields, events, closing=True)

    def _write(
        self,
        rid: str,
        attempt: int,
        fields: Mapping[str, bytes],
        events: Sequence[tuple[int, bytes]],
        *,
        closing: bool,
    ) -> bool:
        record = self._record(rid)
        if record is None or int(record.fields.get("att", b"0")) != attempt:
            return False
        if closing and record.fields.get("status", b"").decode() in TERMINAL:
            return False
        record.fields.update(fields)
        if events:
            record.events_expire = time.monotonic() + self.events_ttl_s
        for seq, payload in events:
            record.events.append(payload)
            record.fields["seq"] = b"%d" % (seq + 1)
            for feed in self._feeds.get(rid, ()):
                feed.deliver(payload)
        return True

    async def cancel_asked(self, rid: str) -> bool:
        record = self._record(rid)
        return record is None or "cx" in record.fields

    async def cancel(self, rid: str) -> str | None:
        record = self._record(rid)
        if record is None:
            return None
        status = record.fields.get("status", b"").decode()
        if status not in TERMINAL:
            record.fields["cx"] = b"1"
        return status

    async def delete(self, rid: str) -> bool:
        if self._records.pop(rid, None) is None:
            return False
        for feed in self._feeds.get(rid, ()):
            feed.deliver(DELETED)
        return True

    async def events(self, rid: str, after: int) -> list[bytes]:
        record = self._record(rid)
        if record is None or record.events_expire <= time.monotonic():
            return []
        return record.events[after + 1 :]

    async def subscribe(self, rid: str) -> Subscription:
        feed = _Feed(self, rid)
        self._feeds.setdefault(rid, set()).add(feed)
        return feed
