"""API key records in Redis: one hash per key (tagged by its id, so records spread over
the shards), an index of ids per tenant and one of every id (sorted sets of score 0,
paged in id order with ZRANGEBYLEX), and a channel of changes.

The indexes are on other slots than the records, so no script can write both: they are
written before a record is created and cleaned after it is deleted, and readers skip an
id whose record is gone (see :mod:`agentd.store.keys`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson

from ...errors import StoreUnavailable
from .. import keys as K
from .. import scripts as L
from ..api import KeyPage, KeyRecord, Keyring, Subscription
from .pubsub import EventHub
from .shards import Shards, once_more_if_broken

__all__ = ("RedisKeyring",)

log = logging.getLogger(__name__)


def _encode(name: str, value: Any) -> bytes:
    if name in ("scopes", "agents", "limits"):
        if name == "limits":
            value = dict(value)
        return orjson.dumps(value)
    if name == "disabled":
        return b"1" if value else b"0"
    if name == "expires_at":
        return b"" if value is None else repr(float(value)).encode()
    if name == "created_at":
        return repr(float(value)).encode()
    return str(value).encode()


_FIELD_NAMES = {"secret_hash": "hash"}


def encode_fields(values: Mapping[str, Any]) -> dict[str, bytes]:
    """Record fields (KeyRecord names) → the stored hash's fields."""
    return {_FIELD_NAMES.get(k, k): _encode(k, v) for k, v in values.items() if k != "id"}


def encode_record(record: KeyRecord) -> dict[str, bytes]:
    return encode_fields({f.name: getattr(record, f.name) for f in dataclasses.fields(record)})


def decode_record(key_id: str, stored: Mapping[str, bytes]) -> KeyRecord:
    """The stored hash's fields → the record."""
    agents = orjson.loads(stored.get("agents", b"null"))
    expires = stored.get("expires_at", b"")
    return KeyRecord(
        id=key_id,
        tenant=stored.get("tenant", b"").decode(),
        secret_hash=stored.get("hash", b"").decode(),
        name=stored.get("name", b"").decode(),
        scopes=tuple(orjson.loads(stored.get("scopes", b"[]"))),
        agents=None if agents is None else tuple(agents),
        limits=orjson.loads(stored.get("limits", b"{}")),
        created_at=float(stored.get("created_at", b"0")),
        expires_at=float(expires) if expires else None,
        disabled=stored.get("disabled", b"0") == b"1",
    )


def _flat(fields: Mapping[str, bytes]) -> list[Any]:
    return [x for kv in fields.items() for x in kv]


def _pairs(flat: list[bytes]) -> dict[str, bytes]:
    return {flat[i].decode(): flat[i + 1] for i in range(0, len(flat), 2)}


def _page_of(index: str, low: str, count: int) -> Callable[[Any], Awaitable[list[bytes]]]:
    return lambda client: client.zrangebylex(index, low, "+", 0, count)


class RedisKeyring(Keyring):
    def __init__(self, shards: Shards, hub: EventHub) -> None:
        self.shards = shards
        self.hub = hub

    async def _changed(self, key_id: str) -> None:
        """Tell every worker; if the channel's shard is down, their caches expire the
        record within auth.key_cache_s anyway (the write itself is done)."""
        try:
            await self.shards.eval(
                L.PUBLISH, [K.KEYS_CHANNEL], [self.shards.publish_command, key_id.encode()]
            )
        except StoreUnavailable as exc:
            log.warning("key %s changed but the change could not be published: %s", key_id, exc)

    async def _index(self, tenant: str, key_id: str, *, add: bool) -> None:
        async def one(key: str) -> None:
            if add:
                await self.shards.call(key, lambda c: c.zadd(key, {key_id: 0}))
            else:
                await self.shards.call(key, lambda c: c.zrem(key, key_id))

        await asyncio.gather(one(K.KEYS_ALL), one(K.tenant_keys(tenant)))

    async def create(self, record: KeyRecord) -> bool:
        await self._index(record.tenant, record.id, add=True)
        key = K.key_record(record.id)
        created = await self.shards.eval(L.KEY_CREATE, [key], _flat(encode_record(record)))
        if created:
            await self._changed(record.id)
        return bool(created)

    async def get(self, key_id: str, *, replica: bool = False) -> KeyRecord | None:
        key = K.key_record(key_id)
        read = once_more_if_broken(lambda c: c.hgetall(key))
        found = await (
            self.shards.read("keys", key, read) if replica else self.shards.call(key, read)
        )
        return decode_record(key_id, {k.decode(): v for k, v in found.items()}) if found else None

    async def list(self, tenant: str | None, *, limit: int, after: str | None = None) -> KeyPage:
        index = K.KEYS_ALL if tenant is None else K.tenant_keys(tenant)
        found: list[KeyRecord] = []
        cursor = after
        while True:
            # One more than the page holds, to know whether another page follows.
            want = limit + 1 - len(found)
            low = "-" if cursor is None else f"({cursor}"
            ids: list[bytes] = await self.shards.call(index, _page_of(index, low, want))
            records = await asyncio.gather(*(self.get(i.decode()) for i in ids))
            for record in records:
                # Skip ids whose record is gone (a revoke between its two writes) or is
                # another tenant's (an index written for an id that was taken).
                if record is None or (tenant is not None and record.tenant != tenant):
                    continue
                if len(found) == limit:
                    return KeyPage(found, found[-1].id)
                found.append(record)
            if len(ids) < want:
                return KeyPage(found, None)
            cursor = ids[-1].decode()

    async def update(self, key_id: str, changes: Mapping[str, Any]) -> KeyRecord | None:
        key = K.key_record(key_id)
        flat = await self.shards.eval(L.KEY_UPDATE, [key], _flat(encode_fields(changes)))
        if not flat:
            return None
        await self._changed(key_id)
        return decode_record(key_id, _pairs(flat))

    async def delete(self, key_id: str) -> KeyRecord | None:
        flat = await self.shards.eval(L.KEY_DELETE, [K.key_record(key_id)], [])
        if not flat:
            return None
        record = decode_record(key_id, _pairs(flat))
        await self._changed(key_id)
        await self._index(record.tenant, key_id, add=False)
        return record

    async def changes(self) -> Subscription:
        return await self.hub.subscribe(K.KEYS_CHANNEL)
