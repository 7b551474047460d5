"""API key records: the interface (``Store.keyring``) and the record they exchange.

A record holds what a key may do, never the key: only a hash of its secret (see
:mod:`agentd.auth.keys`). Validation of what goes in is the admin API's; the keyring
stores and returns records, tells every worker when one changed, and keeps the
per-tenant index. The memory (:mod:`.memory.keyring`) and Redis
(:mod:`.redis.keyring`) keyrings implement it and pass the same tests.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from .api import Subscription

__all__ = (
    "UPDATABLE",
    "KeyPage",
    "KeyRecord",
    "Keyring",
    "decode_record",
    "encode_fields",
    "encode_record",
)

# The fields a key's owner may change after creation (the tenant and hash never change).
UPDATABLE = frozenset({"name", "scopes", "agents", "limits", "disabled", "expires_at"})


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One API key, as stored."""

    id: str
    tenant: str
    # SHA-256 of the key's secret part, hex.
    secret_hash: str
    name: str = ""
    scopes: tuple[str, ...] = ()
    # None: every agent.
    agents: tuple[str, ...] | None = None
    # The key's own limits: LimitsConfig field → value (absent: not limited by the key).
    limits: Mapping[str, int] = field(default_factory=dict)
    created_at: float = 0.0
    # Unix seconds; None: never.
    expires_at: float | None = None
    disabled: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The record as the admin API shows it (never the hash)."""
        return {
            "id": self.id,
            "object": "api_key",
            "tenant": self.tenant,
            "name": self.name,
            "scopes": list(self.scopes),
            "agents": None if self.agents is None else list(self.agents),
            "limits": dict(self.limits),
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "disabled": self.disabled,
        }

    def changed(self, changes: Mapping[str, Any]) -> KeyRecord:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, slots=True)
class KeyPage:
    """A page of keys in id order; ``next_after`` continues after it (None: last page)."""

    keys: list[KeyRecord]
    next_after: str | None


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


class Keyring(abc.ABC):
    """API key records, their per-tenant index, and a feed of which ones changed."""

    @abc.abstractmethod
    async def create(self, record: KeyRecord) -> bool:
        """Store a new record; False (nothing written) if its id is taken."""

    @abc.abstractmethod
    async def get(self, key_id: str) -> KeyRecord | None: ...

    @abc.abstractmethod
    async def list(self, tenant: str | None, *, limit: int, after: str | None = None) -> KeyPage:
        """A tenant's keys (``None``: every tenant's), in id order, after ``after``."""

    @abc.abstractmethod
    async def update(self, key_id: str, changes: Mapping[str, Any]) -> KeyRecord | None:
        """Change ``changes`` (names in :data:`UPDATABLE`) of an existing record at once;
        the new record, or None if there is none."""

    @abc.abstractmethod
    async def delete(self, key_id: str) -> KeyRecord | None:
        """Revoke: remove the record; the removed record, or None if there was none."""

    @abc.abstractmethod
    async def changes(self) -> Subscription:
        """A feed of the ids (bytes) of keys created, updated or revoked by any worker of
        any instance; ``None`` on it when changes may have been missed."""
