"""Sessions and their history, as every implementation does them: ids and messages are
checked and encoded here, and each step is one atomic primitive of the implementation."""

from __future__ import annotations

import abc
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import BadRequest, Conflict
from ..schema import MAX_SEQ, new_session_id, validate_name, validate_session_id
from .api import SessionInfo, SessionPage, Store
from .codec import (
    decode_message,
    dumps,
    encode_stored,
    meta_fields,
    no_session,
    session_info,
)

# An index row: (activity score in unix ms, session id, its meta fields).
IndexRow = tuple[int, str, dict[str, str]]

# Sessions one page of a listing may hold.
MAX_PAGE = 1000


def activity_ms() -> int:
    """A session's activity score: now, in unix milliseconds."""
    return int(time.time() * 1000)


def with_seqs(stored: list[dict[str, Any]], first: int) -> list[dict[str, Any]]:
    """Messages just appended from ``first`` on, each with its ``seq`` (last, as
    :func:`~.codec.decode_message` puts it)."""
    for i, message in enumerate(stored):
        message["seq"] = first + i
    return stored


def _cursor(after: str) -> tuple[int, str]:
    """A listing's ``after`` (``SCORE:ID``) as (score, session id)."""
    score, _, sid = after.partition(":")
    if not score.isascii() or not score.isdigit() or len(score) > 16 or not sid:
        raise BadRequest("after is not a cursor this listing returned", code="invalid_cursor")
    try:
        return int(score), validate_session_id(sid)
    except BadRequest:
        raise BadRequest(
            "after is not a cursor this listing returned", code="invalid_cursor"
        ) from None


__all__ = ("MAX_PAGE", "IndexRow", "SessionStore", "activity_ms", "with_seqs")


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
            tenant=(self.tenant or None) if tenant is None else tenant,
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

    async def update_session(self, session_id: str, *, metadata: Mapping[str, Any]) -> SessionInfo:
        sid = validate_session_id(session_id)
        meta = await self._update_meta(sid, dumps(dict(metadata)).decode())
        if meta is None:
            raise no_session(sid)
        return session_info(sid, meta)

    async def list_sessions(
        self, *, limit: int, after: str | None = None, agent: str | None = None
    ) -> SessionPage:
        if not 1 <= limit <= MAX_PAGE:
            raise BadRequest(f"limit must be from 1 to {MAX_PAGE}", code="invalid_range")
        if agent is not None:
            validate_name("agent", agent)
        cursor = None if after is None else _cursor(after)
        rows = await self._list_sessions(cursor, limit + 1, agent or "")
        page = [session_info(sid, meta) for _, sid, meta in rows[:limit]]
        more = len(rows) > limit
        next_after = f"{rows[limit - 1][0]}:{rows[limit - 1][1]}" if more else None
        return SessionPage(page, next_after)

    async def delete_message(self, session_id: str, seq: int) -> bool:
        sid = validate_session_id(session_id)
        if not 0 < seq <= MAX_SEQ:
            return False
        event = dumps({"kind": "message_deleted", "data": {"seq": seq}})
        found = await self._delete_message(sid, seq, event)
        if found is None:
            raise no_session(sid)
        return found

    def _encode_messages(
        self, messages: Sequence[Mapping[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[bytes]]:
        """The messages as stored (without ``seq``) and their JSON: the caller answers
        with the first, never decoding the second back."""
        now = time.time()
        limit = self.max_message_bytes
        docs, payloads = [], []
        for message in messages:
            doc, payload = encode_stored(message, now, limit)
            docs.append(doc)
            payloads.append(payload)
        return docs, payloads

    async def append(
        self, session_id: str, messages: Sequence[Mapping[str, Any]]
    ) -> list[dict[str, Any]]:
        sid = validate_session_id(session_id)
        if not messages:
            raise BadRequest("nothing to append", code="invalid_message")
        stored, payloads = self._encode_messages(messages)
        first = await self._append(sid, payloads)
        if first is None:
            raise no_session(sid)
        return with_seqs(stored, first)

    async def history(
        self,
        session_id: str,
        *,
        limit: int | None = None,
        after: int | None = None,
        before: int | None = None,
    ) -> list[dict[str, Any]]:
        sid = validate_session_id(session_id)
        if any(v is not None and v < 0 for v in (limit, after, before)):
            raise BadRequest("limit, after and before must be >= 0", code="invalid_range")
        if after is not None and before is not None:
            raise BadRequest("after and before do not go together", code="invalid_range")
        rows = await self._history(sid, after, limit, before)
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
        self, sid: str, after: int | None, limit: int | None, before: int | None = None
    ) -> list[tuple[int, bytes]] | None:
        """(seq, payload) oldest first, as :meth:`history` describes; None if no session."""

    @abc.abstractmethod
    async def _update_meta(self, sid: str, metadata: str) -> dict[str, str] | None:
        """Replace the metadata JSON, refreshing the TTL; the meta fields, None if absent."""

    @abc.abstractmethod
    async def _list_sessions(
        self, cursor: tuple[int, str] | None, limit: int, agent: str = ""
    ) -> list[IndexRow]:
        """Up to ``limit`` live sessions (of ``agent`` only, when given) after ``cursor``
        (score, id), by score then id, both descending; index entries of sessions that
        are gone are dropped."""

    @abc.abstractmethod
    async def _delete_message(self, sid: str, seq: int, event: bytes) -> bool | None:
        """Delete message ``seq`` and publish ``event``; False if no such message, None
        if no session."""

    @abc.abstractmethod
    async def _load(
        self, sid: str, last: int
    ) -> tuple[dict[str, str], list[tuple[int, bytes]]] | None:
        """Meta and the last ``last`` messages in one step, refreshing the TTL."""
