"""Short-lived shared entries of the response cache: L2 entries, the cache epoch, and the
single-flight leases and chunk streams that let one model call serve every instance.

:class:`RedisBlobs` keeps them in the Redis shards (keys in :mod:`.keys`);
:class:`MemoryBlobs` is standalone mode's stand-in, where one worker is the whole
instance: there is no shared level, and every flight leads.
"""

from __future__ import annotations

import abc
import asyncio
from typing import Any

from redis import exceptions as rexc

from . import keys as K
from .base import Subscription
from .pubsub import EventHub
from .shards import Shards

__all__ = ("Blobs", "MemoryBlobs", "RedisBlobs")

Entry = tuple[bytes, dict[bytes, bytes]]


class Blobs(abc.ABC):
    """What the response cache shares between processes."""

    shared: bool = True

    @abc.abstractmethod
    async def get(self, hexkey: str) -> bytes | None: ...

    @abc.abstractmethod
    async def put(self, hexkey: str, data: bytes, ttl_s: float) -> None: ...

    @abc.abstractmethod
    async def clear(self) -> int:
        """Delete every entry, bump the epoch and tell every worker; return how many."""

    @abc.abstractmethod
    async def epoch(self) -> int: ...

    @abc.abstractmethod
    async def invalidations(self) -> Subscription | None:
        """A feed of cache clears (None where there is one worker only)."""

    @abc.abstractmethod
    async def lead(self, hexkey: str, owner: str, ttl_s: float) -> bool:
        """Become the key's single-flight leader unless a live one exists."""

    @abc.abstractmethod
    async def renew(self, hexkey: str, owner: str, ttl_s: float) -> bool: ...

    @abc.abstractmethod
    async def release(self, hexkey: str, owner: str) -> None: ...

    @abc.abstractmethod
    async def emit(self, hexkey: str, fields: dict[str, bytes], ttl_s: float) -> None:
        """Append to the flight's stream (read by followers in other processes)."""

    @abc.abstractmethod
    async def tail(self, hexkey: str, after: bytes, block_s: float) -> list[Entry]:
        """Flight stream entries after ``after`` (``b"0"``: from the start), waiting up
        to ``block_s`` for the first one."""


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class RedisBlobs(Blobs):
    def __init__(self, shards: Shards, hub: EventHub) -> None:
        self.shards = shards
        self.hub = hub

    async def get(self, hexkey: str) -> bytes | None:
        key = K.cache_key(hexkey)
        return await self.shards.call(key, lambda c: c.get(key))

    async def put(self, hexkey: str, data: bytes, ttl_s: float) -> None:
        key = K.cache_key(hexkey)
        await self.shards.call(key, lambda c: c.set(key, data, px=_ms(ttl_s)))

    async def clear(self) -> int:
        deleted = 0
        for client in self._servers():
            batch: list[bytes] = []
            async for key in client.scan_iter(match=K.CACHE_PATTERN, count=1000):
                batch.append(key)
                if len(batch) >= 500:
                    deleted += await client.unlink(*batch)
                    batch = []
            if batch:
                deleted += await client.unlink(*batch)
        await self.shards.call(K.CACHE_EPOCH, lambda c: c.incr(K.CACHE_EPOCH))
        channel = K.CACHE_CHANNEL
        await self.shards.eval(K.PUBLISH, [channel], [self.shards.publish_command, b"clear"])
        return deleted

    def _servers(self) -> list[Any]:
        if self.shards.cluster is None:
            return list(self.shards.clients)
        cluster = self.shards.cluster
        return [cluster.get_redis_connection(node) for node in cluster.get_primaries()]

    async def epoch(self) -> int:
        value = await self.shards.call(K.CACHE_EPOCH, lambda c: c.get(K.CACHE_EPOCH))
        return int(value or 0)

    async def invalidations(self) -> Subscription | None:
        return await self.hub.subscribe(K.CACHE_CHANNEL)

    async def lead(self, hexkey: str, owner: str, ttl_s: float) -> bool:
        return bool(
            await self.shards.eval(K.LEAD, list(K.flight_keys(hexkey)), [owner, _ms(ttl_s)])
        )

    async def renew(self, hexkey: str, owner: str, ttl_s: float) -> bool:
        lock, _ = K.flight_keys(hexkey)
        return bool(await self.shards.eval(K.RENEW_LOCK, [lock], [owner, _ms(ttl_s)]))

    async def release(self, hexkey: str, owner: str) -> None:
        lock, _ = K.flight_keys(hexkey)
        await self.shards.eval(K.RELEASE_LOCK, [lock], [owner])

    async def emit(self, hexkey: str, fields: dict[str, bytes], ttl_s: float) -> None:
        _, stream = K.flight_keys(hexkey)
        flat = [x for kv in fields.items() for x in kv]
        await self.shards.eval(K.EMIT, [stream], [_ms(ttl_s), *flat])

    async def tail(self, hexkey: str, after: bytes, block_s: float) -> list[Entry]:
        _, stream = K.flight_keys(hexkey)

        async def read(client: Any) -> Any:
            try:
                return await client.xread({stream: after}, block=_ms(block_s), count=512)
            except rexc.TimeoutError:
                return None

        # XREAD BLOCK may outlast the socket timeout: bound the block below it.
        block_s = min(block_s, self.shards.config.timeout * 0.8)
        reply = await self.shards.call(stream, read)
        if not reply:
            return []
        return list(reply[0][1]) if isinstance(reply, list) else list(reply[stream.encode()][0])


class MemoryBlobs(Blobs):
    """Standalone mode: one worker holds everything in its L1; nothing is shared."""

    shared = False

    async def get(self, hexkey: str) -> bytes | None:
        return None

    async def put(self, hexkey: str, data: bytes, ttl_s: float) -> None:
        return None

    async def clear(self) -> int:
        return 0

    async def epoch(self) -> int:
        return 0

    async def invalidations(self) -> Subscription | None:
        return None

    async def lead(self, hexkey: str, owner: str, ttl_s: float) -> bool:
        return True

    async def renew(self, hexkey: str, owner: str, ttl_s: float) -> bool:
        return True

    async def release(self, hexkey: str, owner: str) -> None:
        return None

    async def emit(self, hexkey: str, fields: dict[str, bytes], ttl_s: float) -> None:
        return None

    async def tail(self, hexkey: str, after: bytes, block_s: float) -> list[Entry]:
        await asyncio.sleep(block_s)
        return []
