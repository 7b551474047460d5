"""Standalone mode's API key records: one process, so one dict and one channel."""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from typing import Any

from .. import keys as K
from ..api import KeyPage, KeyRecord, Keyring, Subscription
from .feeds import Channels

__all__ = ("MemoryKeyring",)


class MemoryKeyring(Keyring):
    def __init__(self, channels: Channels) -> None:
        self._channels = channels
        self._records: dict[str, KeyRecord] = {}
        self._ids: list[str] = []  # sorted, for paging

    def _changed(self, key_id: str) -> None:
        self._channels.send(K.KEYS_CHANNEL, key_id.encode())

    async def create(self, record: KeyRecord) -> bool:
        if record.id in self._records:
            return False
        self._records[record.id] = record
        bisect.insort(self._ids, record.id)
        self._changed(record.id)
        return True

    async def get(self, key_id: str, *, replica: bool = False) -> KeyRecord | None:
        return self._records.get(key_id)

    async def list(self, tenant: str | None, *, limit: int, after: str | None = None) -> KeyPage:
        start = 0 if after is None else bisect.bisect_right(self._ids, after)
        found: list[KeyRecord] = []
        for key_id in self._ids[start:]:
            record = self._records[key_id]
            if tenant is not None and record.tenant != tenant:
                continue
            if len(found) == limit:
                return KeyPage(found, found[-1].id)
            found.append(record)
        return KeyPage(found, None)

    async def update(self, key_id: str, changes: Mapping[str, Any]) -> KeyRecord | None:
        record = self._records.get(key_id)
        if record is None:
            return None
        record = self._records[key_id] = record.changed(changes)
        self._changed(key_id)
        return record

    async def delete(self, key_id: str) -> KeyRecord | None:
        record = self._records.pop(key_id, None)
        if record is None:
            return None
        self._ids.pop(bisect.bisect_left(self._ids, key_id))
        self._changed(key_id)
        return record

    async def changes(self) -> Subscription:
        return self._channels.subscribe(K.KEYS_CHANNEL)
