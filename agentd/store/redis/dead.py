"""Dead letters in Redis: each partition's capped stream ``keys.dead_key``, and the
record scripts a retry needs (see :class:`agentd.store.dead.DeadLetters`)."""

from __future__ import annotations

import time
from typing import Any

from .. import keys as K
from ..api import DEAD_MAXLEN, DeadLetter, DeadLetters, DeadPage
from . import ops_scripts as O
from .shards import Shards

__all__ = ("RedisDeadLetters",)


def _letter(partition: str, entry: str, fields: dict[bytes, bytes]) -> DeadLetter:
    return DeadLetter(
        id=entry,
        partition=partition,
        job_id=fields.get(b"id", b"").decode(),
        error=fields.get(b"error", b"null"),
        attempts=int(fields.get(b"att", b"0")),
    )


class RedisDeadLetters(DeadLetters):
    shards: Shards
    prefix: str  # the tenant's key prefix, for the records (RedisRecords has it)

    async def dead_letters(self, partition: str, *, limit: int, after: str | None) -> DeadPage:
        key = K.dead_key(partition)
        top = f"({after}" if after else "+"

        async def page(client: Any) -> Any:
            return await client.xrevrange(key, max=top, min="-", count=limit + 1)

        rows = await self.shards.call(key, page)
        letters = [_letter(partition, e.decode(), f) for e, f in rows[:limit]]
        more = len(rows) > limit
        return DeadPage(letters, letters[-1].id if more and letters else None)

    async def take_dead(self, partition: str, entry: str) -> DeadLetter | None:
        flat = await self.shards.eval(O.DEAD_TAKE, [K.dead_key(partition)], [entry])
        if not flat:
            return None
        return _letter(partition, entry, dict(zip(flat[::2], flat[1::2], strict=True)))

    async def put_dead(self, partition: str, job_id: str, error: bytes, attempts: int) -> str:
        key = K.dead_key(partition)
        fields = {"id": job_id, "error": error, "att": attempts}
        entry = await self.shards.call(
            key, lambda c: c.xadd(key, fields, maxlen=DEAD_MAXLEN, approximate=True)
        )
        return entry.decode() if isinstance(entry, bytes) else str(entry)

    async def requeue(self, rid: str) -> str | None:
        key = K.record_keys(rid, self.prefix)[0]
        status = await self.shards.eval(O.RECORD_REQUEUE, [key], [], acked=True)
        return None if status is None else status.decode()

    async def unqueue(self, rid: str) -> bool:
        key = K.record_keys(rid, self.prefix)[0]
        return bool(await self.shards.eval(O.RECORD_UNQUEUE, [key], [b"%f" % time.time()]))
