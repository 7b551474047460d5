"""The store's contract and the logic every implementation shares.

:class:`Store` is what the rest of agentd uses. It validates input, encodes JSON and
implements the shared-state operations that read-modify-write (merge patch, increment)
on top of a small set of primitives (the ``_`` methods) that each backend — memory
(:mod:`.memory`) or Redis (:mod:`.redis`) — implements atomically. Both backends pass
the same test-suite, so the layers above never know which one runs.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import math
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from ..config import Config
from ..errors import BadRequest, Conflict, NotFound, PayloadTooLarge
from ..schema import (
    ROLES,
    STORED_MESSAGE_FIELDS,
    new_session_id,
    validate_name,
    validate_session_id,
)

if TYPE_CHECKING:
    from .blobs import Blobs
    from .jobs import Jobs

__all__ = (
    "Event",
    "SessionInfo",
    "StateConflict",
    "StateDoc",
    "Store",
    "Subscription",
    "TurnLease",
    "merge_patch",
)

log = logging.getLogger(__name__)

# A read-modify-write of shared state retries on a concurrent write this many times.
MAX_CAS_ATTEMPTS = 64


@dataclass(frozen=True, slots=True)
class SessionInfo:
    id: str
    created_at: float
    tenant: str | None = None
    agent: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    last_seq: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "session",
            "created_at": self.created_at,
            "tenant": self.tenant,
            "agent": self.agent,
            "metadata": self.metadata,
            "last_seq": self.last_seq,
        }


@dataclass(frozen=True, slots=True)
class TurnLease:
    """A session's turn lease: its fencing token, and what the turn read when taking it."""

    session: SessionInfo
    token: int
    history: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class StateDoc:
    value: Any
    version: int


class StateConflict(Conflict):
    """A compare-and-set found another version; carries the current document."""

    status = 412
    code = "version_conflict"

    def __init__(self, current: StateDoc | None) -> None:
        detail = {
            "current": None
            if current is None
            else {"value": current.value, "version": current.version}
        }
        super().__init__("the document has another version", detail=detail)
        self.current = current


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened to a session, as every watcher receives it.

    ``messages`` events carry the appended messages (each with its ``seq``); other kinds
    (``deleted``, or any a caller publishes) carry ``data``.
    """

    session_id: str
    kind: str
    messages: tuple[dict[str, Any], ...] = ()
    data: dict[str, Any] | None = None


# A watcher that falls this far behind loses its backlog and catches up from history.
MAX_BACKLOG = 1000


class Subscription(abc.ABC):
    """One watcher's feed of a session channel's raw events, queued until read.

    A backend calls :meth:`deliver` for each event and :meth:`reset` when events may
    have been lost; a watcher too far behind is reset too, so memory stays bounded.
    """

    def __init__(self) -> None:
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._overflowed = False

    def deliver(self, event: bytes) -> None:
        if self._queue.qsize() >= MAX_BACKLOG:
            self.reset()
            return
        self._queue.put_nowait(event)

    def reset(self) -> None:
        if not self._overflowed:
            self._overflowed = True
            self._queue.put_nowait(None)

    async def get(self) -> bytes | None:
        """The next raw event, or None when the feed was interrupted and re-established
        (events may have been missed: the watcher catches up from history)."""
        item = await self._queue.get()
        if item is None:
            self._overflowed = False
        return item

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop receiving."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: ``patch`` applied to ``target`` (neither is mutated)."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError as exc:
        raise BadRequest(f"value is not JSON: {exc}", code="invalid_json") from None


def _dumps_limited(value: Any, limit: int, what: str, code: str) -> bytes:
    data = _dumps(value)
    if len(data) > limit:
        raise PayloadTooLarge(f"{what} is {len(data)} bytes; the limit is {limit}", code=code)
    return data


class Store(abc.ABC):
    """Sessions, their history and events, and shared state documents."""

    mode: str = "abstract"
    # The response cache's shared part (L2, single-flight): see .blobs.
    blobs: Blobs
    # The job queue and response records of background responses: see .jobs.
    jobs: Jobs

    def __init__(self, config: Config) -> None:
        self.config = config
        self.ttl = config.sessions.ttl
        self.max_messages = config.sessions.max_messages
        self.max_message_bytes = config.sessions.max_message_bytes
        self.max_value_bytes = config.state.max_value_bytes

    # -- life cycle ------------------------------------------------------------------

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect (Redis) or prepare; called once per worker before serving."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and stop background tasks."""

    async def readiness(self) -> str | None:
        """``None`` when every part of the store is reachable, else why not."""
        return None

    # -- sessions --------------------------------------------------------------------

    async def create_session(
        self,
        session_id: str | None = None,
        *,
        tenant: str | None = None,
        agent: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> SessionInfo:
        """Create a session; a client-chosen id that exists is a :class:`Conflict`."""
        sid = new_session_id() if session_id is None else validate_session_id(session_id)
        info = SessionInfo(
            id=sid,
            created_at=time.time(),
            tenant=tenant,
            agent=agent,
            metadata=dict(metadata or {}),
        )
        meta = {
            "created_at": repr(info.created_at),
            "tenant": tenant or "",
            "agent": agent or "",
            "metadata": _dumps(info.metadata).decode(),
        }
        if not await self._create(sid, meta):
            raise Conflict(f"session {sid!r} already exists", code="session_exists")
        return info

    async def get_session(self, session_id: str) -> SessionInfo:
        """The session's metadata (refreshing its TTL); :class:`NotFound` if absent."""
        sid = validate_session_id(session_id)
        meta = await self._get_meta(sid)
        if meta is None:
            raise _no_session(sid)
        return _session_info(sid, meta)

    async def delete_session(self, session_id: str) -> None:
        sid = validate_session_id(session_id)
        if not await self._delete(sid):
            raise _no_session(sid)

    # -- history ---------------------------------------------------------------------

    def _encode_message(self, message: Mapping[str, Any], now: float) -> bytes:
        if not isinstance(message, Mapping):
            raise BadRequest("a message must be an object", code="invalid_message")
        role = message.get("role")
        if role not in ROLES:
            raise BadRequest(f"message role must be one of {sorted(ROLES)}", code="invalid_message")
        unknown = set(message) - STORED_MESSAGE_FIELDS
        if unknown:
            raise BadRequest(f"unknown message field(s): {sorted(unknown)}", code="invalid_message")
        doc = {k: v for k, v in message.items() if v is not None}
        doc["created_at"] = now
        return _dumps_limited(doc, self.max_message_bytes, "message", "message_too_large")

    async def append(
        self, session_id: str, messages: Sequence[Mapping[str, Any]]
    ) -> list[dict[str, Any]]:
        """Append messages, refresh the TTL and publish one ``messages`` event, atomically.

        Returns the stored messages with their ``seq`` and ``created_at``.
        """
        sid = validate_session_id(session_id)
        if not messages:
            raise BadRequest("nothing to append", code="invalid_message")
        now = time.time()
        payloads = [self._encode_message(m, now) for m in messages]
        first = await self._append(sid, payloads)
        if first is None:
            raise _no_session(sid)
        return [_decode(first + i, p) for i, p in enumerate(payloads)]

    async def history(
        self, session_id: str, *, limit: int | None = None, after: int | None = None
    ) -> list[dict[str, Any]]:
        """Messages oldest first: those after ``after`` (a seq), at most ``limit`` of them;
        with no ``after``, the last ``limit``."""
        sid = validate_session_id(session_id)
        if (limit is not None and limit < 0) or (after is not None and after < 0):
            raise BadRequest("limit and after must be >= 0", code="invalid_range")
        rows = await self._history(sid, after, limit)
        if rows is None:
            raise _no_session(sid)
        return [_decode(seq, payload) for seq, payload in rows]

    async def load(self, session_id: str, last: int) -> tuple[SessionInfo, list[dict[str, Any]]]:
        """What a turn needs, in one round trip: metadata and the last ``last`` messages."""
        sid = validate_session_id(session_id)
        found = await self._load(sid, last)
        if found is None:
            raise _no_session(sid)
        meta, rows = found
        return _session_info(sid, meta), [_decode(seq, p) for seq, p in rows]

    # -- turns -----------------------------------------------------------------------

    async def begin_turn(self, session_id: str, last: int, lease_s: float) -> TurnLease | None:
        """Take the session's turn lease and read what the turn needs, in one step.

        Returns None while another turn holds the lease; :class:`NotFound` if no session.
        """
        sid = validate_session_id(session_id)
        found = await self._begin_turn(sid, last, _ms(lease_s))
        if found is None:
            raise _no_session(sid)
        token, meta, rows = found
        if token == 0:
            return None
        info = _session_info(sid, meta)
        return TurnLease(info, token, [_decode(seq, p) for seq, p in rows])

    async def renew_turn(self, session_id: str, token: int, lease_s: float) -> str:
        """Extend the lease: ``held``, ``interrupted`` (held, but another turn asked it
        to stop) or ``lost`` (expired and maybe taken by another turn)."""
        code = await self._renew_turn(validate_session_id(session_id), token, _ms(lease_s))
        return ("lost", "held", "interrupted")[code]

    async def interrupt_turn(self, session_id: str) -> bool:
        """Ask the running turn of the session, if any, to stop (it sees it on renewal)."""
        return await self._interrupt_turn(validate_session_id(session_id))

    async def end_turn(
        self, session_id: str, token: int, messages: Sequence[Mapping[str, Any]]
    ) -> list[dict[str, Any]]:
        """Append the turn's messages (none: just let go) and release the lease, in one
        step, only while ``token`` still holds it; else :class:`Conflict` ``turn_lost``."""
        sid = validate_session_id(session_id)
        now = time.time()
        payloads = [self._encode_message(m, now) for m in messages]
        first = await self._end_turn(sid, token, payloads)
        if first is None:
            raise _no_session(sid)
        if first < 0:
            raise Conflict("the turn lost its session lease to another turn", code="turn_lost")
        return [_decode(first + i, p) for i, p in enumerate(payloads)]

    # -- events ----------------------------------------------------------------------

    async def publish(self, session_id: str, kind: str, data: Mapping[str, Any]) -> None:
        """Send an event to every watcher of the session, on any instance."""
        sid = validate_session_id(session_id)
        await self._publish(sid, _dumps({"kind": kind, "data": dict(data)}))

    async def watch(self, session_id: str, after: int | None = None) -> AsyncIterator[Event]:
        """Events of a session, live. With ``after``, first every stored message after
        that seq; ``messages`` events then continue with no gap and no duplicate, also
        across a lost subscription (missed messages are read back from history)."""
        events = await self.open_watch(session_id, after)
        try:
            async for event in events:
                yield event
        finally:
            await events.aclose()

    async def open_watch(self, session_id: str, after: int | None = None) -> AsyncGenerator[Event]:
        """Like :meth:`watch`, but subscribed by the time it returns, so that a caller can
        report a failure to subscribe before it starts streaming."""
        sid = validate_session_id(session_id)
        # Subscribe before reading history, so nothing falls between the two.
        sub = await self._subscribe(sid)
        return self._follow(sid, sub, after)

    async def _follow(
        self, sid: str, sub: Subscription, after: int | None
    ) -> AsyncGenerator[Event]:
        try:
            last = after
            if after is not None:
                caught_up = await self._catch_up(sid, after)
                if caught_up is not None:
                    last = caught_up[-1]["seq"]
                    yield Event(sid, "messages", tuple(caught_up))
            while True:
                raw = await sub.get()
                if raw is None:  # the subscription was re-established: events may be lost
                    if last is not None:
                        missed = await self._catch_up(sid, last)
                        if missed is not None:
                            last = missed[-1]["seq"]
                            yield Event(sid, "messages", tuple(missed))
                    continue
                doc = orjson.loads(raw)
                kind = doc.get("kind")
                if kind != "messages":
                    yield Event(sid, kind, data=doc.get("data"))
                    if kind == "deleted":
                        return
                    continue
                messages = doc["messages"]
                if last is not None and messages[0]["seq"] > last + 1:
                    # A gap: fill it (and more) from history.
                    missed = await self._catch_up(sid, last)
                    messages = missed or []
                elif last is not None:
                    messages = [m for m in messages if m["seq"] > last]
                if messages:
                    last = messages[-1]["seq"]
                    yield Event(sid, "messages", tuple(messages))
        finally:
            await sub.close()

    async def _catch_up(self, sid: str, after: int) -> list[dict[str, Any]] | None:
        rows = await self._history(sid, after, None)
        if rows is None:
            raise _no_session(sid)
        return [_decode(seq, p) for seq, p in rows] or None

    # -- shared state ----------------------------------------------------------------

    def _state_key(self, namespace: str, key: str) -> str:
        return f"{validate_name('namespace', namespace)}/{validate_name('key', key)}"

    def _encode_value(self, value: Any) -> bytes:
        return _dumps_limited(value, self.max_value_bytes, "document", "value_too_large")

    async def state_get(self, namespace: str, key: str) -> StateDoc:
        found = await self._state_read(self._state_key(namespace, key))
        if found is None:
            raise NotFound(f"no state at {namespace}/{key}", code="state_not_found")
        return StateDoc(orjson.loads(found[0]), found[1])

    async def state_put(
        self, namespace: str, key: str, value: Any, *, expected_version: int | None = None
    ) -> StateDoc:
        """Write a document. With ``expected_version`` it is a compare-and-set (0 means
        "must not exist"); a mismatch raises :class:`StateConflict` with the current one."""
        name = self._state_key(namespace, key)
        ok, version, current = await self._state_write(
            name, self._encode_value(value), expected_version
        )
        if not ok:
            raise StateConflict(
                None if current is None else StateDoc(orjson.loads(current), version)
            )
        return StateDoc(value, version)

    async def state_delete(
        self, namespace: str, key: str, *, expected_version: int | None = None
    ) -> None:
        name = self._state_key(namespace, key)
        ok, version, current = await self._state_remove(name, expected_version)
        if ok:
            return
        if current is None:
            raise NotFound(f"no state at {namespace}/{key}", code="state_not_found")
        raise StateConflict(StateDoc(orjson.loads(current), version))

    async def state_patch(self, namespace: str, key: str, patch: Any) -> StateDoc:
        """Apply an RFC 7386 merge patch atomically (the document need not exist)."""
        return await self._read_modify_write(
            namespace, key, lambda value: merge_patch(value, patch)
        )

    async def state_increment(
        self, namespace: str, key: str, path: Sequence[str], by: int | float
    ) -> StateDoc:
        """Add ``by`` to the number at ``path`` (created as 0, with its parents)."""
        if (
            not isinstance(path, (list, tuple))
            or not path
            or not all(isinstance(p, str) and p for p in path)
        ):
            raise BadRequest("path must be a non-empty list of field names", code="invalid_path")
        if isinstance(by, bool) or not isinstance(by, (int, float)):
            raise BadRequest("by must be a number", code="invalid_increment")

        def bump(value: Any) -> Any:
            root = value if isinstance(value, dict) else {} if value is None else None
            if root is None:
                raise BadRequest("the document is not an object", code="invalid_path")
            root = dict(root)
            node = root
            for part in path[:-1]:
                child = node.get(part)
                if child is None:
                    child = {}
                elif not isinstance(child, dict):
                    raise BadRequest(f"{part!r} is not an object", code="invalid_path")
                node[part] = child = dict(child)
                node = child
            current = node.get(path[-1], 0)
            if isinstance(current, bool) or not isinstance(current, (int, float)):
                raise BadRequest(f"{path[-1]!r} is not a number", code="invalid_path")
            total = current + by
            if not math.isfinite(total):
                raise BadRequest("the increment overflows", code="invalid_increment")
            node[path[-1]] = total
            return root

        return await self._read_modify_write(namespace, key, bump)

    async def _read_modify_write(self, namespace: str, key: str, change: Any) -> StateDoc:
        """Compare-and-set loop: each write applies to exactly the version it read.

        Done here rather than in Lua on purpose: Redis's Lua JSON library turns empty
        arrays into objects and rounds numbers to 14 digits, which would corrupt documents.
        """
        name = self._state_key(namespace, key)
        for attempt in range(MAX_CAS_ATTEMPTS):
            found = await self._state_read(name)
            value, version = (None, 0) if found is None else (orjson.loads(found[0]), found[1])
            new = change(value)
            ok, new_version, _ = await self._state_write(name, self._encode_value(new), version)
            if ok:
                return StateDoc(new, new_version)
            # Contention: back off a little, with jitter, so writers do not lock-step.
            await asyncio.sleep(secrets.randbelow(1000) / 1e6 * (attempt + 1))
        raise Conflict(
            f"{namespace}/{key} changed {MAX_CAS_ATTEMPTS} times while being updated; retry",
            code="state_contended",
        )

    # -- primitives, implemented atomically by each backend ---------------------------

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

    @abc.abstractmethod
    async def _subscribe(self, sid: str) -> Subscription:
        """Start receiving the session's channel (returns once subscribed)."""

    @abc.abstractmethod
    async def _publish(self, sid: str, event: bytes) -> None:
        """Publish an encoded event (``{"kind", "data"}``) on the session's channel."""

    @abc.abstractmethod
    async def _state_read(self, name: str) -> tuple[bytes, int] | None:
        """(document JSON, version) or None."""

    @abc.abstractmethod
    async def _state_write(
        self, name: str, data: bytes, expected: int | None
    ) -> tuple[bool, int, bytes | None]:
        """Write if ``expected`` is None or equals the current version (0 = absent).

        Returns (written, version, current JSON): the new version when written, else the
        current version and document (None and 0 when absent)."""

    @abc.abstractmethod
    async def _state_remove(
        self, name: str, expected: int | None
    ) -> tuple[bool, int, bytes | None]:
        """Delete if present and (``expected`` is None or matches); same return shape."""


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _no_session(sid: str) -> NotFound:
    return NotFound(f"no session {sid!r}", code="session_not_found")


def _decode(seq: int, payload: bytes) -> dict[str, Any]:
    message = orjson.loads(payload)
    message["seq"] = seq
    return message


def _session_info(sid: str, meta: Mapping[str, str]) -> SessionInfo:
    return SessionInfo(
        id=sid,
        created_at=float(meta.get("created_at") or 0),
        tenant=meta.get("tenant") or None,
        agent=meta.get("agent") or None,
        metadata=orjson.loads(meta.get("metadata") or "{}"),
        last_seq=int(meta.get("seq") or 0),
    )
