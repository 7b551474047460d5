"""Standalone mode's cache tier: one worker holds everything in its L1, so nothing is
shared and every single-flight leads."""

from __future__ import annotations

import asyncio

from ..api import Blobs, Entry, Subscription

__all__ = ("MemoryBlobs",)


class MemoryBlobs(Blobs):
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

    async def release(self, hexkey: str, owner: str, ttl_s: float) -> None:
        return None

    async def emit(self, hexkey: str, fields: dict[str, bytes], ttl_s: float) -> None:
        return None

    async def tail(self, hexkey: str, after: bytes, block_s: float) -> list[Entry]:
        await asyncio.sleep(block_s)
        return []
