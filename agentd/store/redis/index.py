"""A Redis Cluster's session index writes, behind the session scripts.

In a cluster the index buckets are in other slots than the sessions, so no session
script can write them. Rather than a second command beside every append (twice the
commands and connections on the hot path), a worker collects its index writes and
sends them as one cluster pipeline at a time (grouped per node), the next batch as soon
as the last is written. A listing first waits for this worker's pending writes, so a
worker reads its own writes; another worker's arrive a round trip later. A batch that
fails is logged and dropped: its sessions are indexed again at their next write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from ...errors import AgentdError
from .shards import Shards

__all__ = ("IndexWrites",)

log = logging.getLogger(__name__)


class IndexWrites:
    """This worker's pending index writes: (index key, session id) → score, or None to
    remove the entry."""

    def __init__(self, shards: Shards) -> None:
        self.shards = shards
        self._pending: dict[tuple[str, str], int | None] = {}
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def add(self, key: str, sid: str, score: int) -> None:
        self._pending[(key, sid)] = score
        self._schedule()

    def remove(self, key: str, sid: str) -> None:
        self._pending[(key, sid)] = None
        self._schedule()

    def _schedule(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.flush())

    async def flush(self) -> None:
        """Write every pending entry (after a batch another caller is writing)."""
        async with self._lock:
            while self._pending:
                batch, self._pending = self._pending, {}
                try:
                    await self._write(batch)
                except AgentdError as exc:
                    log.warning("%d session index write(s) lost: %s", len(batch), exc.message)
                except Exception:
                    log.exception("%d session index write(s) lost", len(batch))

    async def _write(self, batch: dict[tuple[str, str], int | None]) -> None:
        async def run(client: Any) -> None:
            pipe = client.pipeline()
            for (key, sid), score in batch.items():
                if score is None:
                    pipe.zrem(key, sid)
                else:
                    pipe.zadd(key, {sid: score})
            await pipe.execute()

        await self.shards.call(next(iter(batch))[0], run)

    async def close(self) -> None:
        await self.flush()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
