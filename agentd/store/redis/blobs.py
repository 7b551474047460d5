"""The response cache's shared tier in Redis: L2 entries, the cache epoch, and the
single-flight leases and chunk streams that let one model call serve every instance."""

from __future__ import annotations

from typing import Any

from redis import exceptions as rexc

from .. import keys as K
from .. import scripts as L
from ..api import Blobs, Entry, Subscription
from ..codec import ms
from .pubsub import EventHub
from .shards import Shards

__all__ = ("RedisBlobs",)


class RedisBlobs(Blobs):
    def __init__(self, shards: Shards, hub: EventHub) -> None:
        self.shards = shards
        self.hub = hub

    async def get(self, hexkey: str) -> bytes | None:
        key = K.cache_key(hexkey)
        return await self.shards.read("cache", key, lambda c: c.get(key))

    async def put(self, hexkey: str, data: bytes, ttl_s: float) -> None:
        key = K.cache_key(hexkey)
        await self.shards.call(key, lambda c: c.set(key, data, px=ms(ttl_s)))

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
        await self.shards.eval(L.PUBLISH, [channel], [self.shards.publish_command, b"clear"])
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
        return bool(await self.shards.eval(L.LEAD, list(K.flight_keys(hexkey)), [owner, ms(ttl_s)]))

    async def renew(self, hexkey: str, owner: str, ttl_s: float) -> bool:
        # The stream too: a follower that joins after a pause longer than the lease
        # must still read the flight from its first chunk.
        keys = list(K.flight_keys(hexkey))
        return bool(await self.shards.eval(L.RENEW_LOCK, keys, [owner, ms(ttl_s)]))

    async def release(self, hexkey: str, owner: str, ttl_s: float) -> None:
        keys = list(K.flight_keys(hexkey))
        await self.shards.eval(L.RELEASE_LOCK, keys, [owner, ms(ttl_s)])

    async def emit(self, hexkey: str, fields: dict[str, bytes], ttl_s: float) -> None:
        _, stream = K.flight_keys(hexkey)
        flat = [x for kv in fields.items() for x in kv]
        await self.shards.eval(L.EMIT, [stream], [ms(ttl_s), *flat])

    async def tail(self, hexkey: str, after: bytes, block_s: float) -> list[Entry]:
        _, stream = K.flight_keys(hexkey)

        async def read(client: Any) -> Any:
            try:
                return await client.xread({stream: after}, block=ms(block_s), count=512)
            except rexc.TimeoutError:
                return None

        # XREAD BLOCK may outlast the socket timeout: bound the block below it.
        block_s = min(block_s, self.shards.config.timeout * 0.8)
        reply = await self.shards.call(stream, read)
        if not reply:
            return []
        return list(reply[0][1]) if isinstance(reply, list) else list(reply[stream.encode()][0])
