"""Turn leases, as every implementation does them: one turn at a time per session, in
every instance, fenced by a token so that a stalled turn cannot append over a newer one.

What a turn reads with its lease is decoded as it is asked for: a turn of an agent
needs the window in the form its model call sends (:mod:`.upstream`, kept decoded per
worker), and the stored messages themselves only to find a reply it already stored."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import Conflict
from ..schema import validate_session_id
from .api import SessionInfo, TurnLease
from .codec import decode_message, ms, no_session, session_info
from .sessions import SessionStore, with_seqs
from .upstream import upstream_window

__all__ = ("TurnStore",)


class _ReadLease(TurnLease):
    """A lease with what the turn read as the store gave it, decoded when first asked for."""

    __slots__ = ("_history", "_meta", "_rows", "_session", "_sid")

    def __init__(
        self, sid: str, token: int, meta: Mapping[str, str], rows: list[tuple[int, bytes]]
    ) -> None:
        super().__init__(token)
        self._sid, self._meta, self._rows = sid, meta, rows
        self._session: SessionInfo | None = None
        self._history: list[dict[str, Any]] | None = None

    @property
    def session(self) -> SessionInfo:
        if self._session is None:
            self._session = session_info(self._sid, self._meta)
        return self._session

    @property
    def history(self) -> list[dict[str, Any]]:
        if self._history is None:
            self._history = [decode_message(seq, p) for seq, p in self._rows]
        return self._history

    @property
    def window(self) -> list[dict[str, Any]]:
        return upstream_window(self._rows)


class TurnStore(SessionStore):
    """:class:`Store`'s turn leases over the primitives below."""

    async def begin_turn(self, session_id: str, last: int, lease_s: float) -> TurnLease | None:
        sid = validate_session_id(session_id)
        found = await self._begin_turn(sid, last, ms(lease_s))
        if found is None:
            raise no_session(sid)
        token, meta, rows = found
        if token == 0:
            return None
        return _ReadLease(sid, token, meta, rows)

    async def renew_turn(self, session_id: str, token: int, lease_s: float) -> str:
        code = await self._renew_turn(validate_session_id(session_id), token, ms(lease_s))
        return ("lost", "held", "interrupted")[code]

    async def interrupt_turn(self, session_id: str) -> bool:
        return await self._interrupt_turn(validate_session_id(session_id))

    async def end_turn(
        self, session_id: str, token: int, messages: Sequence[Mapping[str, Any]]
    ) -> list[dict[str, Any]]:
        sid = validate_session_id(session_id)
        stored, payloads = self._encode_messages(messages)
        first = await self._end_turn(sid, token, payloads)
        if first is None:
            raise no_session(sid)
        if first < 0:
            raise Conflict("the turn lost its session lease to another turn", code="turn_lost")
        return with_seqs(stored, first)

    # -- primitives, each atomic in every implementation -----------------------------

    @abc.abstractmethod
    async def _begin_turn(
        self, sid: str, last: int, lease_ms: int
    ) -> tuple[int, dict[str, str], list[tuple[int, bytes]]] | None:
        """(token or 0 if busy, meta, last ``last`` entries if taken), or None if no session."""

    @abc.abstractmethod
    async def _renew_turn(self, sid: str, token: int, lease_ms: int) -> int:
        """1 held, 2 held with an interrupt asked, 0 lost."""

    @abc.abstractmethod
    async def _interrupt_turn(self, sid: str) -> bool:
        """Flag the current lease, if any."""

    @abc.abstractmethod
    async def _end_turn(self, sid: str, token: int, payloads: list[bytes]) -> int | None:
        """Fenced append + release: first seq (0 if nothing), -1 if lost, None if no session."""
