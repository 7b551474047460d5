"""The Redis store: every primitive is one Lua script (one round trip) on the session's shard.

Works the same on one Redis, on client-side shards and on a Redis Cluster (see
:mod:`.shards`); the keys are in :mod:`agentd.store.keys`, the scripts in
:mod:`agentd.store.scripts`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ...config import Config
from .. import keys as K
from .. import scripts as L
from ..api import Jobs, Subscription
from ..base import BaseStore
from .blobs import RedisBlobs
from .pubsub import EventHub
from .queue import RedisQueue
from .records import RedisRecords
from .shards import Shards

__all__ = ("RedisJobs", "RedisStore")


def _pairs(flat: list[bytes]) -> dict[str, str]:
    return {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}


def _entries(rows: list[Any]) -> list[tuple[int, bytes]]:
    """Stream entries ``[id, [b"m", payload]]`` as (seq, payload)."""
    return [(int(entry_id.split(b"-", 1)[0]), fields[1]) for entry_id, fields in rows]


class RedisJobs(RedisQueue, RedisRecords, Jobs):
    """The queue and the records, over the same shards and pub/sub connections."""

    def __init__(self, shards: Shards, hub: EventHub, waits: Shards, events_ttl_s: int) -> None:
        RedisQueue.__init__(self, shards, waits)
        RedisRecords.__init__(self, shards, hub, events_ttl_s)


class RedisStore(BaseStore):
    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.mode = config.mode
        self.shards = Shards(config.redis)
        self.hub = EventHub(self.shards)
        self.blobs = RedisBlobs(self.shards, self.hub)
        # Job consumers wait on their streams (XREADGROUP BLOCK) over connections of their
        # own, one per stream they read, so waiting never takes the pool's connections.
        served = set(config.server.partitions)
        streams = sum(
            p.queue_shards for p in config.all_partitions() if not served or p.name in served
        )
        self.waits = Shards(
            dataclasses.replace(config.redis, pool_size=max(1, streams)), outages_of=self.shards
        )
        self.jobs = RedisJobs(self.shards, self.hub, self.waits, config.jobs.events_ttl_s)

    async def start(self) -> None:
        await self.shards.start()
        await self.waits.start()

    async def close(self) -> None:
        await self.hub.close()
        await self.shards.close()
        await self.waits.close()

    async def readiness(self) -> str | None:
        reasons = await self.shards.unreachable()
        return "; ".join(reasons) if reasons else None

    # -- sessions and history -------------------------------------------------------

    async def _create(self, sid: str, meta: dict[str, str]) -> bool:
        flat = [x for kv in meta.items() for x in kv]
        created = await self.shards.eval(L.CREATE, list(K.session_keys(sid)), [self.ttl, *flat])
        return bool(created)

    async def _get_meta(self, sid: str) -> dict[str, str] | None:
        flat = await self.shards.eval(L.GET_META, list(K.session_keys(sid)), [self.ttl])
        return None if flat is None else _pairs(flat)

    async def _delete(self, sid: str) -> bool:
        keys = [*K.session_keys(sid), K.session_channel(sid), K.turn_key(sid)]
        return bool(await self.shards.eval(L.DELETE, keys, [self.shards.publish_command]))

    async def _append(self, sid: str, payloads: list[bytes]) -> int | None:
        keys = [*K.session_keys(sid), K.session_channel(sid)]
        args = [self.ttl, self.max_messages, self.shards.publish_command, *payloads]
        return await self.shards.eval(L.APPEND, keys, args)

    async def _history(
        self, sid: str, after: int | None, limit: int | None
    ) -> list[tuple[int, bytes]] | None:
        args = [self.ttl, "" if after is None else after, "" if limit is None else limit]
        rows = await self.shards.eval(L.HISTORY, list(K.session_keys(sid)), args)
        return None if rows is None else _entries(rows)

    async def _load(
        self, sid: str, last: int
    ) -> tuple[dict[str, str], list[tuple[int, bytes]]] | None:
        found = await self.shards.eval(L.LOAD, list(K.session_keys(sid)), [self.ttl, last])
        if found is None:
            return None
        return _pairs(found[0]), _entries(found[1])

    # -- turns ----------------------------------------------------------------------

    async def _begin_turn(
        self, sid: str, last: int, lease_ms: int
    ) -> tuple[int, dict[str, str], list[tuple[int, bytes]]] | None:
        keys = [*K.session_keys(sid), K.turn_key(sid)]
        found = await self.shards.eval(L.BEGIN_TURN, keys, [self.ttl, last, lease_ms])
        if found is None:
            return None
        return int(found[0]), _pairs(found[1]), _entries(found[2])

    async def _renew_turn(self, sid: str, token: int, lease_ms: int) -> int:
        return int(await self.shards.eval(L.RENEW_TURN, [K.turn_key(sid)], [token, lease_ms]))

    async def _interrupt_turn(self, sid: str) -> bool:
        return bool(await self.shards.eval(L.INTERRUPT_TURN, [K.turn_key(sid)], []))

    async def _end_turn(self, sid: str, token: int, payloads: list[bytes]) -> int | None:
        keys = [*K.session_keys(sid), K.session_channel(sid), K.turn_key(sid)]
        args = [self.ttl, self.max_messages, self.shards.publish_command, token, *payloads]
        return await self.shards.eval(L.END_TURN, keys, args)

    # -- events ---------------------------------------------------------------------

    async def _subscribe(self, sid: str) -> Subscription:
        return await self.hub.subscribe(K.session_channel(sid))

    async def _publish(self, sid: str, event: bytes) -> None:
        channel = K.session_channel(sid)
        await self.shards.eval(L.PUBLISH, [channel], [self.shards.publish_command, event])

    # -- shared state ---------------------------------------------------------------

    async def _state_read(self, name: str) -> tuple[bytes, int] | None:
        key = K.state_key(name)
        value, version = await self.shards.call(key, lambda c: c.hmget(key, "v", "ver"))
        return None if value is None else (value, int(version))

    async def _state_write(
        self, name: str, data: bytes, expected: int | None
    ) -> tuple[bool, int, bytes | None]:
        args = [data, "" if expected is None else expected]
        reply = await self.shards.eval(L.STATE_WRITE, [K.state_key(name)], args)
        return bool(reply[0]), int(reply[1]), reply[2] if len(reply) > 2 else None

    async def _state_remove(
        self, name: str, expected: int | None
    ) -> tuple[bool, int, bytes | None]:
        args = ["" if expected is None else expected]
        reply = await self.shards.eval(L.STATE_REMOVE, [K.state_key(name)], args)
        return bool(reply[0]), int(reply[1]), reply[2] if len(reply) > 2 else None
