"""Session events, as every implementation does them: publishing, and watching live with
a catch-up from history, so a watcher sees every message once, in order, with no gap."""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from typing import Any

import orjson

from ..aio import end_if_cancelled
from ..errors import StoreUnavailable
from ..schema import validate_session_id
from .api import Event, Subscription, Watch
from .codec import decode_message, dumps, no_session
from .sessions import SessionStore

__all__ = ("WatchStore",)

# A running watch's catch-up on an unreachable shard is tried again after this long,
# doubling up to the maximum, until the shard answers or the watcher goes away.
CATCH_UP_RETRY_S = 0.1
CATCH_UP_RETRY_MAX_S = 1.0


class _Cursor:
    """Where a watch is: the last sequence number it gave (None: none yet, and no
    ``after``), and whether its events stop at a wait for the channel (where
    :meth:`_Watch.poll` may go on for them)."""

    __slots__ = ("last", "parked", "sid")

    def __init__(self, sid: str, last: int | None) -> None:
        self.sid = sid
        self.last = last
        self.parked = False


class _Watch(Watch):
    """A watch's events, and its subscription: closing it ends the subscription even if
    the events were never read (closing an async generator that never started runs none
    of its code, its ``finally`` included)."""

    __slots__ = ("_cursor", "_events", "_sub")

    def __init__(
        self, events: AsyncGenerator[Event | None], sub: Subscription, cursor: _Cursor
    ) -> None:
        self._events = events
        self._sub = sub
        self._cursor = cursor

    def notify(self, callback: Callable[[], None] | None) -> None:
        self._sub.on_event = callback

    def poll(self) -> tuple[list[Event], bool]:
        # What the events' generator does for a channel's message event with no gap,
        # without resuming it (no task, no await): the common case of a live watch.
        cursor, sub = self._cursor, self._sub
        if not cursor.parked:
            return [], True
        events: list[Event] = []
        while (raw := sub.peek()) is not None:
            doc = orjson.loads(raw)
            if doc.get("kind") != "messages":
                return events, True
            messages = doc["messages"]
            last = cursor.last
            if last is not None:
                if messages[0]["seq"] > last + 1:
                    return events, True  # a gap: history to read
                messages = [m for m in messages if m["seq"] > last]
            sub.drop()
            if messages:
                cursor.last = messages[-1]["seq"]
                events.append(Event(cursor.sid, "messages", tuple(messages)))
        return events, sub.pending  # a reset left: the generator catches up

    async def next_ready(self) -> Event | None:
        return await self._events.asend(None)

    async def asend(self, value: None) -> Event:
        while (event := await self._events.asend(value)) is None:
            pass  # where a reader of next_ready stops
        return event

    async def athrow(self, *args: Any) -> Event:
        event = await self._events.athrow(*args)
        return event if event is not None else await self.asend(None)

    async def aclose(self) -> None:
        try:
            await self._events.aclose()
        finally:
            await self._sub.close()  # a second close does nothing


class WatchStore(SessionStore):
    """:class:`Store`'s events over a subscription primitive and the session's history."""

    async def publish(self, session_id: str, kind: str, data: Mapping[str, Any]) -> None:
        sid = validate_session_id(session_id)
        await self._publish(sid, dumps({"kind": kind, "data": dict(data)}))

    async def watch(self, session_id: str, after: int | None = None) -> AsyncIterator[Event]:
        events = await self.open_watch(session_id, after)
        try:
            async for event in events:
                yield event
        finally:
            await events.aclose()

    async def open_watch(self, session_id: str, after: int | None = None) -> Watch:
        sid = validate_session_id(session_id)
        # Subscribe before reading history, so nothing falls between the two.
        sub = await self._subscribe(sid)
        cursor = _Cursor(sid, after)
        return _Watch(self._follow(sid, sub, cursor), sub, cursor)

    async def _follow(
        self, sid: str, sub: Subscription, cursor: _Cursor
    ) -> AsyncGenerator[Event | None]:
        """The events; a None before each wait for the channel (see Watch.next_ready).
        ``cursor.last`` is the last sequence number given, here or by ``_Watch.poll``."""
        try:
            after = cursor.last
            if after is not None:
                caught_up = await self._catch_up(sid, after)
                if caught_up is not None:
                    cursor.last = caught_up[-1]["seq"]
                    yield Event(sid, "messages", tuple(caught_up))
            while True:
                # A cancel dropped while catching up (see end_if_cancelled) must not
                # leave the watcher waiting for events forever.
                end_if_cancelled()
                if not sub.pending:
                    cursor.parked = True
                    try:
                        yield None
                    finally:
                        cursor.parked = False
                raw = await sub.get()
                last = cursor.last
                if raw is None:  # the subscription was re-established: events may be lost
                    if last is not None:
                        missed = await self._catch_up_again(sid, last)
                        if missed is not None:
                            cursor.last = missed[-1]["seq"]
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
                    missed = await self._catch_up_again(sid, last)
                    messages = missed or []
                elif last is not None:
                    messages = [m for m in messages if m["seq"] > last]
                if messages:
                    cursor.last = messages[-1]["seq"]
                    yield Event(sid, "messages", tuple(messages))
        finally:
            await sub.close()

    async def _catch_up_again(self, sid: str, after: int) -> list[dict[str, Any]] | None:
        """:meth:`_catch_up` for a watch already running: a shard that is unreachable
        (a failover under way, the shard's fail-fast period) is waited for, not fatal to
        the watch, whose subscription is in place again."""
        delay = CATCH_UP_RETRY_S
        while True:
            try:
                return await self._catch_up(sid, after)
            except StoreUnavailable:
                await asyncio.sleep(delay)
                delay = min(CATCH_UP_RETRY_MAX_S, delay * 2)

    async def _catch_up(self, sid: str, after: int) -> list[dict[str, Any]] | None:
        rows = await self._history(sid, after, None)
        if rows is None:
            raise no_session(sid)
        return [decode_message(seq, p) for seq, p in rows] or None

    # -- primitives ------------------------------------------------------------------

    @abc.abstractmethod
    async def _subscribe(self, sid: str) -> Subscription:
        """Start receiving the session's channel (returns once subscribed)."""

    @abc.abstractmethod
    async def _publish(self, sid: str, event: bytes) -> None:
        """Publish an encoded event (``{"kind", "data"}``) on the session's channel."""
