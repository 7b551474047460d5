"""Standalone mode's service registry: one process, so the registry is this process's
own table, with the Redis registry's semantics (entries not renewed for the ttl go)."""

from __future__ import annotations

import time

from ..api import Member, Registry

__all__ = ("MemoryRegistry",)


class MemoryRegistry(Registry):
    def __init__(self) -> None:
        self._members: dict[str, tuple[float, bytes]] = {}

    async def beat(self, worker_id: str, entry: bytes, ttl_s: float) -> float:
        now = time.time()
        for wid in [w for w, (seen, _) in self._members.items() if seen < now - ttl_s]:
            del self._members[wid]
        self._members[worker_id] = (now, entry)
        return now

    async def leave(self, worker_id: str) -> None:
        self._members.pop(worker_id, None)

    async def members(self, ttl_s: float) -> list[Member]:
        since = time.time() - ttl_s
        return [
            Member(wid, seen, entry)
            for wid, (seen, entry) in sorted(self._members.items())
            if seen >= since
        ]
