"""Response records in Redis: a response's state is one hash and its events one stream,
both tagged with the response id (one slot), as is the list of its tool loop's recorded
steps; its live events are one channel. Every write
made while running is one script, fenced by the record's attempt number."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from .. import keys as K
from .. import scripts as L
from ..api import DELETED, Records, Start, Subscription
from .pubsub import EventHub
from .shards import Shards

__all__ = ("RedisRecords",)


def _fields_flat(fields: Mapping[str, bytes]) -> list[Any]:
    return [x for kv in fields.items() for x in kv]


def _events_flat(events: Sequence[tuple[int, bytes]]) -> list[Any]:
    return [x for seq, payload in events for x in (seq, payload)]


class RedisRecords(Records):
    def __init__(self, shards: Shards, hub: EventHub, events_ttl_s: int) -> None:
        self.shards = shards
        self.hub = hub
        self.events_ttl_s = events_ttl_s
        # The tenant's key prefix (see keys.tenant_prefix).
        self.prefix = K.PREFIX

    async def create(
        self,
        rid: str,
        fields: Mapping[str, bytes],
        ttl_s: int,
        events: Sequence[tuple[int, bytes]] = (),
    ) -> None:
        keys = list(K.record_keys(rid, self.prefix))
        args = [ttl_s, self.shards.publish_command, self.events_ttl_s, len(fields)]
        args += _fields_flat(fields)
        await self.shards.eval(L.RECORD_CREATE, keys, [*args, *_events_flat(events)], acked=True)

    async def read(self, rid: str) -> dict[str, bytes] | None:
        key = K.record_keys(rid, self.prefix)[0]
        found = await self.shards.call(key, lambda c: c.hgetall(key))
        return {k.decode(): v for k, v in found.items()} if found else None

    async def start(self, rid: str, max_attempts: int, consumer: str) -> Start:
        keys = list(K.record_keys(rid, self.prefix))
        args = [max_attempts, time.time(), consumer]
        reply = await self.shards.eval(L.RECORD_START, keys, args)
        verdict = reply[0].decode()
        if verdict == "gone":
            return Start("gone")
        if verdict == "done":
            return Start("done", status=reply[1].decode())
        flat = reply[3]
        record = {flat[i].decode(): flat[i + 1] for i in range(0, len(flat), 2)}
        return Start(verdict, int(reply[1]), int(reply[2]), record=record)

    async def update(self, rid: str, attempt: int, fields: Mapping[str, bytes]) -> bool:
        keys = list(K.record_keys(rid, self.prefix))
        return bool(await self.shards.eval(L.RECORD_UPDATE, keys, [attempt, *_fields_flat(fields)]))

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
        keys = [*K.record_keys(rid, self.prefix), K.steps_key(rid, self.prefix)]
        args = [
            attempt,
            self.shards.publish_command,
            self.events_ttl_s,
            1 if closing else 0,
            len(fields),
            *_fields_flat(fields),
            *_events_flat(events),
        ]
        # The record's end is acknowledged (to its pollers, its webhook); events on the way
        # are not waited for, each one.
        return bool(await self.shards.eval(L.RECORD_WRITE, keys, args, acked=closing))

    async def cancel_asked(self, rid: str) -> bool:
        key = K.record_keys(rid, self.prefix)[0]
        found = await self.shards.call(key, lambda c: c.hmget(key, "cx", "att"))
        return found[0] is not None or found[1] is None

    async def cancel(self, rid: str) -> str | None:
        keys = list(K.record_keys(rid, self.prefix))
        status = await self.shards.eval(L.RECORD_CANCEL, keys, [], acked=True)
        return status.decode() if status else None

    async def delete(self, rid: str) -> bool:
        keys = [*K.record_keys(rid, self.prefix), K.steps_key(rid, self.prefix)]
        return bool(
            await self.shards.eval(
                L.RECORD_DELETE, keys, [self.shards.publish_command, DELETED], acked=True
            )
        )

    async def events(self, rid: str, after: int) -> list[bytes]:
        stream = K.record_keys(rid, self.prefix)[1]
        start = f"(0-{after + 1}" if after >= 0 else "-"
        rows = await self.shards.call(stream, lambda c: c.xrange(stream, start, "+"))
        return [fields[b"e"] for _, fields in rows]

    async def subscribe(self, rid: str) -> Subscription:
        return await self.hub.subscribe(K.record_keys(rid, self.prefix)[2])

    async def record_step(self, rid: str, attempt: int, index: int, step: bytes) -> bool:
        keys = [K.record_keys(rid, self.prefix)[0], K.steps_key(rid, self.prefix)]
        return bool(await self.shards.eval(L.RECORD_STEP, keys, [attempt, index, step]))

    async def steps(self, rid: str) -> list[bytes]:
        key = K.steps_key(rid, self.prefix)
        return list(await self.shards.call(key, lambda c: c.lrange(key, 0, -1)))
