"""Session events, as every implementation does them: publishing, and watching live with
a catch-up from history, so a watcher sees every message once, in order, with no gap.

A worker watching one session many times (fifty WebSockets on one conversation) holds
one subscription for it: :class:`_Session` receives the session's channel once, decodes
each event once, and hands it to each of its watchers' queues. A watcher is a small
object with no task and no async generator of its own: an idle one costs a slot in its
session's set and a hundred-odd bytes. Each watcher keeps its own place (the last
sequence number it saw), its own catch-up from history, and its own bounded queue: one
that falls ``MAX_BACKLOG`` events behind drops the rest until it reads again and then
catches up from history, so a slow reader never holds the others up. An event's
messages are the same objects for every watcher of the session: read them, never change
them. A reader's own turns (:meth:`Watch.own`: a connection's, which it hears as delta
and done frames) count as read without being given to it: an event that is one of them
and follows the reader's place is taken as it arrives, queued for nobody.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import orjson

from ..aio import end_if_cancelled
from ..errors import StoreUnavailable
from ..schema import validate_session_id
from .api import MAX_BACKLOG, Event, Subscription, Watch
from .codec import decode_message, dumps, no_session
from .sessions import SessionStore

__all__ = ("WatchStore",)

log = logging.getLogger(__name__)

# A running watch's catch-up on an unreachable shard is tried again after this long,
# doubling up to the maximum, until the shard answers or the watcher goes away.
CATCH_UP_RETRY_S = 0.1
CATCH_UP_RETRY_MAX_S = 1.0

# A watcher's states: catching up from ``after`` on its first read, live, ended.
_START, _LIVE, _ENDED = 0, 1, 2

# A worker's watched sessions: the unnamed tenant's by id, any other's by (tenant, id).
Watched = dict["str | tuple[str, str]", "_Session"]


class _Session:
    """One session's subscription in this worker, shared by every watcher of it. Called
    by the subscription when events come in (an object, not a bound method made per
    session); one watcher is held as itself, more in a set (most sessions have one)."""

    __slots__ = ("closing", "key", "opening", "sid", "store", "sub", "watchers")

    def __init__(self, store: WatchStore, key: str | tuple[str, str], sid: str) -> None:
        self.store = store
        self.key = key
        self.sid = sid
        self.sub: Subscription | None = None
        self.watchers: _Watcher | set[_Watcher] | None = None
        self.closing: asyncio.Task[None] | None = None
        # Subscribing runs in a task of its own: an opener cancelled meanwhile does not
        # cancel it under the others waiting for it. Dropped once done.
        self.opening: asyncio.Future[Subscription] | None = asyncio.ensure_future(
            store._subscribe(sid)
        )
        self.opening.add_done_callback(self._opened)

    def _opened(self, task: asyncio.Future[Subscription]) -> None:
        watched = self.store._watched
        if task.cancelled() or task.exception() is not None:
            if watched.get(self.key) is self:
                del watched[self.key]  # the next opener tries again
            return
        self.opening = None
        self.sub = task.result()
        self.sub.on_event = self
        if self.watchers is None:  # every opener went away while subscribing
            self._close()
        elif self.sub.pending:
            self()

    def __call__(self) -> None:
        """Events came in on the channel: decode each once, queue it for every watcher."""
        assert self.sub is not None
        for raw in self.sub.drain():
            if raw is None:
                doc = None
            else:
                try:
                    doc = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    log.warning("session %s: an event that is not JSON; ignored", self.sid)
                    continue
            watchers = self.watchers
            if isinstance(watchers, _Watcher):
                watchers.push(doc)
            elif watchers is not None:
                for watcher in list(watchers):
                    watcher.push(doc)

    def count(self) -> int:
        watchers = self.watchers
        return 0 if watchers is None else 1 if isinstance(watchers, _Watcher) else len(watchers)

    def join(self, watcher: _Watcher) -> None:
        watchers = self.watchers
        if watchers is None:
            self.watchers = watcher
        elif isinstance(watchers, _Watcher):
            self.watchers = {watchers, watcher}
        else:
            watchers.add(watcher)

    def leave(self, watcher: _Watcher) -> asyncio.Task[None] | None:
        """Forget ``watcher``; the last one to leave ends the subscription (its task)."""
        watchers = self.watchers
        if watchers is watcher:
            self.watchers = None
        elif isinstance(watchers, set):
            watchers.discard(watcher)
            if len(watchers) == 1:
                self.watchers = next(iter(watchers))
        if self.watchers is not None or self.sub is None:
            return self.closing  # still subscribing: _opened closes it if nobody is left
        return self._close()

    def _close(self) -> asyncio.Task[None]:
        watched = self.store._watched
        if watched.get(self.key) is self:
            del watched[self.key]
        if self.closing is None:
            assert self.sub is not None
            self.sub.on_event = None
            self.closing = asyncio.ensure_future(self.sub.close())
            self.store._closing.add(self.closing)
            self.closing.add_done_callback(self.store._closing.discard)
        return self.closing


class _Watcher(Watch):
    """One reader's place in a session's events (see the module's docstring)."""

    __slots__ = ("_after", "_callback", "_last", "_overflowed", "_own", "_parked", "_queue",
                 "_session", "_state", "_waiter")  # fmt: skip

    def __init__(self, session: _Session, after: int | None) -> None:
        self._session = session
        self._after = after
        self._last = after
        self._state = _START
        # Decoded events not read yet (None: events may be lost, catch up); made when needed.
        self._queue: collections.deque[dict[str, Any] | None] | None = None
        self._overflowed = False
        self._waiter: asyncio.Future[None] | None = None
        self._callback: Callable[[], None] | None = None
        # Whether next_ready stopped at an empty queue (where poll may go on for it).
        self._parked = False
        # The reader's own turns whose messages have not come by yet (see own).
        self._own: set[str] | None = None

    def own(self, turn: str) -> None:
        if self._own is None:
            self._own = set()
        self._own.add(turn)

    def disown(self, turn: str) -> None:
        own = self._own
        if own is not None:
            own.discard(turn)
            if not own:
                self._own = None

    def push(self, doc: dict[str, Any] | None) -> None:
        if self._state == _ENDED:
            return
        queue = self._queue
        if queue is None:
            if self._own is not None and self._parked and doc is not None and self._read(doc):
                return
            queue = self._queue = collections.deque()
        elif len(queue) >= MAX_BACKLOG or self._overflowed:
            # Too far behind: drop events until the reader reaches this mark, then it
            # catches up from history (the Subscription rule, per watcher).
            if self._overflowed:
                return
            self._overflowed = True
            doc = None
        queue.append(doc)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        if self._callback is not None:
            self._callback()

    def _read(self, doc: dict[str, Any]) -> bool:
        """Take ``doc`` as read if it is wholly one of the reader's own turns and comes
        right after its place (nothing queued or being read before it): what giving it
        would come to, as the reader drops its own turns' messages."""
        if doc.get("kind") != "messages" or not (messages := doc["messages"]):
            return False
        turn = messages[0].get("turn")
        last = self._last
        if turn not in (self._own or ()) or (last is not None and messages[0]["seq"] != last + 1):
            return False
        for message in messages:
            if message.get("turn") != turn:
                return False
        self._last = messages[-1]["seq"]
        self.disown(turn)
        return True

    def notify(self, callback: Callable[[], None] | None) -> None:
        self._callback = callback

    async def next_ready(self) -> Event | None:
        try:
            return await self._next_ready()
        except BaseException:
            # As an async generator would: an error out of it ends the watch.
            await self._end()
            raise

    async def _next_ready(self) -> Event | None:
        self._parked = False
        sid = self._session.sid
        store = self._session.store
        if self._state == _START:
            self._state = _LIVE
            if self._after is not None:
                caught_up = await store._catch_up(sid, self._after)
                if caught_up is not None and (event := self._given(caught_up)) is not None:
                    return event
        while True:
            if self._state == _ENDED:
                raise StopAsyncIteration
            # A cancel dropped while catching up (see end_if_cancelled) must not leave
            # the watcher waiting for events forever.
            end_if_cancelled()
            queue = self._queue
            if not queue:
                self._parked = True
                return None
            doc = queue.popleft()
            if not queue:
                self._queue = None  # an idle watcher holds no buffer
            last = self._last
            if doc is None:  # re-subscribed, or too far behind: events may be lost
                self._overflowed = False
                if last is not None:
                    missed = await store._catch_up_again(sid, last)
                    if missed is not None and (event := self._given(missed)) is not None:
                        return event
                continue
            kind = doc.get("kind")
            if kind != "messages":
                if kind == "deleted":
                    await self._end()
                return Event(sid, kind, data=doc.get("data"))
            messages = self._new(doc["messages"])
            if messages is None:  # a gap: fill it (and more) from history
                messages = await store._catch_up_again(sid, last) or []
            if messages and (event := self._given(messages)) is not None:
                return event

    def _new(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        """The messages of an event past the last one given; None: a gap before them."""
        last = self._last
        if last is None:
            return messages
        if messages[0]["seq"] > last + 1:
            return None
        return [m for m in messages if m["seq"] > last]

    def _given(self, messages: list[dict[str, Any]]) -> Event | None:
        """The event of ``messages`` (not empty), now the last given: those of the
        reader's own turns left out (None if that is all of them)."""
        self._last = messages[-1]["seq"]
        own = self._own
        if own is not None:
            mine = {turn for m in messages if (turn := m.get("turn")) in own}
            if mine:
                # A turn stores its messages in one append: its id is done with.
                messages = [m for m in messages if m.get("turn") not in mine]
                own -= mine
                if not own:
                    self._own = None
                if not messages:
                    return None
        return Event(self._session.sid, "messages", tuple(messages))

    def poll(self) -> tuple[list[Event], bool]:
        # What next_ready does for queued message events with no gap, without a
        # coroutine: the common case of a live watch (a turn's messages).
        if not self._parked:
            return [], True
        events: list[Event] = []
        queue = self._queue
        while queue:
            doc = queue[0]
            if doc is None or doc.get("kind") != "messages":
                return events, True  # history to read, or an event the task handles
            messages = self._new(doc["messages"])
            if messages is None:
                return events, True  # a gap: history to read
            queue.popleft()
            if messages and (event := self._given(messages)) is not None:
                events.append(event)
        self._queue = None  # an idle watcher holds no buffer
        return events, False

    async def asend(self, value: None) -> Event:
        while (event := await self.next_ready()) is None:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            except BaseException:
                await self._end()
                raise
            finally:
                self._waiter = None
        return event

    async def athrow(self, *args: Any) -> Event:
        await self._end()
        exc = args[0] if len(args) == 1 or args[1] is None else args[1]
        if isinstance(exc, type):
            exc = exc()
        raise exc

    async def aclose(self) -> None:
        await self._end()

    async def _end(self) -> None:
        """Leave the session's subscription (a second call does nothing)."""
        if self._state == _ENDED:
            return
        self._state = _ENDED
        self._queue = None
        self._callback = None
        closing = self._session.leave(self)
        if closing is not None:
            # Shielded: a reader cancelled while it closes still ends the subscription.
            await asyncio.shield(closing)


class WatchStore(SessionStore):
    """:class:`Store`'s events over a subscription primitive and the session's history."""

    # Shared by the tenants' views (shallow copies of the root store); made in __init__.
    _watched: Watched
    _closing: set[asyncio.Task[None]]

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
        key = (self.tenant, sid) if self.tenant else sid
        session = self._watched.get(key)
        if session is None:
            session = self._watched[key] = _Session(self, key, sid)
        # Joined before reading history (on the first read), so nothing falls between.
        watcher = _Watcher(session, after)
        session.join(watcher)
        try:
            if session.opening is not None:
                await asyncio.shield(session.opening)
        except BaseException:
            await watcher._end()
            raise
        return watcher

    def watch_counts(self) -> tuple[int, int]:
        """This worker's session subscriptions and their watchers (every tenant's)."""
        sessions = [s for s in self._watched.values() if s.sub is not None]
        return len(sessions), sum(s.count() for s in sessions)

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
