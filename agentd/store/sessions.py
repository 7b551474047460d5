"""Sessions and their history, as every implementation does them: ids and messages are
checked and encoded here, and each step is one atomic primitive of the implementation."""

from __future__ import annotations

import abc
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import BadRequest, Conflict
from ..schema import new_session_id, validate_session_id
from .api import SessionInfo, Store
from .codec import decode_message, encode_message, meta_fields, no_session, session_info

__all__ = ("SessionStore",)


class SessionStore(Store):
    """:class:`Store`'s sessions and history over the primitives below."""

    ttl: int
    max_messages: int
    max_message_bytes: int

    async def create_session(
        self,
        session_id: str | None = None,
        *,
        tenant: str | None = None,
        agent: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> SessionInfo:
        sid = new_session_id() if session_id is None else validate_session_id(session_id)
        info = SessionInfo(
            id=sid,
            created_at=time.time(),
            tenant=tenant,
            agent=agent,
            metadata=dict(metadata or {}),
        )
        if not await self._create(sid, meta_fields(info)):
            raise Conflict(f"session {sid!r} already exists", code="session_exists")
        return info

    async def get_session(self, session_id: str) -> SessionInfo:
        sid = validate_session_id(session_id)
        meta = await self._get_meta(sid)
        if meta is None:
            raise no_session(sid)
        return session_info(sid, meta)

    async def delete_session(self, session_id: str) -> None:
        sid = validate_session_id(session_id)
        if not await self._delete(sid):
            raise no_session(sid)

    def _encode_messages(self, messages: Sequence[Mapping[str, Any]]) -> list[bytes]:
        now = time.time()
        return [encode_message(m, now, self.max_message_bytes) for m in messages]

    async def append(
        self, session_id: str, messages: Sequence[Mapping[str, Any]]
    ) -> list[dict[str, Any]]:
        sid = validate_session_id(session_id)
        if not messages:
            raise BadRequest("nothing to append", code="invalid_message")
        payloads = self._encode_messages(messages)
        first = await self._append(sid, payloads)
        if first is None:
            raise no_session(sid)
        return [decode_message(first + i, p) for i, p in enumerate(payloads)]

    async def history(
        self, session_id: str, *, limit: int | None = None, after: int | None = None
    ) -> list[dict[str, Any]]:
        sid = validate_session_id(session_id)
        if (limit is not None and limit < 0) or (after is not None and after < 0):
            raise BadRequest("limit and after must be >= 0", code="invalid_range")
        rows = await self._history(sid, after, limit)
        if rows is None:
            raise no_session(sid)
        return [decode_message(seq, payload) for seq, payload in rows]

    async def load(self, session_id: str, last: int) -> tuple[SessionInfo, list[dict[str, Any]]]:
        sid = validate_session_id(session_id)
        found = await self._load(sid, last)
        if found is None:
            raise no_session(sid)
        meta, rows = found
        return session_info(sid, meta), [decode_message(seq, p) for seq, p in rows]

    # -- primitives, each atomic in every implementation -----------------------------

    @abc.abstractmethod
    async def _create(self, sid: str, meta: dict[str, str]) -> bool:
        """Create the session with ``meta`` (and TTL) unless it exists; False if it did."""

    @abc.abstractmethod
    async def _get_meta(self, sid: str) -> dict[str, str] | None:
        """The session's meta fields (with ``seq``, the last seq), refreshing the TTL."""

    @abc.abstractmethod
    async def _delete(self, sid: str) -> bool:
        """Delete the session and its history, publish ``deleted``; False if absent."""

    @abc.abstractmethod
    async def _append(self, sid: str, payloads: list[bytes]) -> int | None:
        """Append, trim to ``max_messages``, refresh TTL and publish the ``messages`` event,
        atomically; return the first new seq, or None if the session does not exist."""

    @abc.abstractmethod
    async def _history(
        self, sid: str, after: int | None, limit: int | None
    ) -> list[tuple[int, bytes]] | None:
        """(seq, payload) oldest first, as :meth:`history` describes; None if no session."""

    @abc.abstractmethod
    async def _load(
        self, sid: str, last: int
    ) -> tuple[dict[str, str], list[tuple[int, bytes]]] | None:
        """Meta and the last ``last`` messages in one step, refreshing the TTL."""
