"""The in-memory store of standalone mode: one process, same semantics as Redis.

Every primitive runs without awaiting in between, so on one event loop each is atomic,
as a Lua script is in Redis. TTLs are enforced lazily on access and by a periodic sweep.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import time
from collections import deque
from dataclasses import dataclass, field

from ...config import Config
from ..api import Jobs, Subscription
from ..base import BaseStore
from ..codec import SESSION_DELETED
from ..sessions import IndexRow, activity_ms
from .blobs import MemoryBlobs
from .dead import MemoryDeadLetters
from .feeds import Channels
from .keyring import MemoryKeyring
from .limits import MemoryLimits
from .queue import MemoryQueue
from .records import MemoryRecords
from .registry import MemoryRegistry

__all__ = ("MemoryJobs", "MemoryStore")

SWEEP_INTERVAL = 60.0
# Stale listing entries allowed beyond one per session before a write compacts them.
STALE_SLACK = 1024


# An empty history: a session holds no deque until its first message (an empty deque
# is ~700 bytes, and every open WebSocket's hello may create a session).
_NO_MESSAGES: deque[tuple[int, bytes]] = deque(maxlen=0)


def _last(messages: deque[tuple[int, bytes]], count: int) -> list[tuple[int, bytes]]:
    """The last ``count`` messages, oldest first, read from the end: a turn's history
    window costs its own length, not the session's (up to ``max_messages``)."""
    rows = list(itertools.islice(reversed(messages), count)) if count > 0 else []
    rows.reverse()
    return rows


def _add(index: list[tuple[int, str]], entry: tuple[int, str]) -> None:
    """Add ``entry`` to a listing index, in order: nearly always the latest, appended."""
    if not index or index[-1] < entry:
        index.append(entry)
    else:
        bisect.insort(index, entry)


@dataclass(slots=True)
class _Session:
    meta: dict[str, str]
    expires: float
    seq: int = 0
    messages: deque[tuple[int, bytes]] = field(default_factory=lambda: _NO_MESSAGES)
    fence: int = 0
    # The turn lease: (token, expires at, interrupt asked).
    lease: tuple[int, float, bool] | None = None

    def lease_token(self) -> int:
        if self.lease is None or self.lease[1] <= time.monotonic():
            self.lease = None
            return 0
        return self.lease[0]


@dataclass
class _Space:
    """One tenant's sessions, listing index, shared state and channels."""

    sessions: dict[str, _Session] = field(default_factory=dict)
    # The listing's index: (activity ms, id) ascending, and each session's entry.
    # A written session moves to the end, so the list's tail is what changes.
    index: list[tuple[int, str]] = field(default_factory=list)
    activity: dict[str, int] = field(default_factory=dict)
    # The same per agent, for the sessions that have one (a session's agent never changes).
    agents: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    # Entries of those indexes that a later write of their session replaced, left where
    # they are (a write appends, searching no index) until a compaction drops them: at
    # the next listing, or once they outnumber the sessions by STALE_SLACK.
    stale: int = 0
    state: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    # The state listing's index: the namespaces holding documents, and each one's keys,
    # both sorted.
    namespaces: list[str] = field(default_factory=list)
    state_keys: dict[str, list[str]] = field(default_factory=dict)
    channels: Channels = field(default_factory=Channels)


class MemoryJobs(MemoryQueue, MemoryRecords, MemoryDeadLetters, Jobs):
    """Standalone mode's queue and records: one process, the same semantics."""

    def __init__(self, events_ttl_s: int) -> None:
        MemoryQueue.__init__(self)
        MemoryRecords.__init__(self, events_ttl_s)


class MemoryStore(BaseStore):
    mode = "standalone"
    jobs: MemoryJobs

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        # Each tenant's objects; this object sees tenant "", its views their own.
        self._spaces: dict[str, _Space] = {}
        self._bind(self._spaces.setdefault("", _Space()))
        self._sweeper: asyncio.Task[None] | None = None
        self.blobs = MemoryBlobs()
        self.jobs = MemoryJobs(config.jobs.events_ttl_s)
        self.limits = MemoryLimits()
        self.keyring = MemoryKeyring(self._channels)
        self.registry = MemoryRegistry()

    def _bind(self, space: _Space) -> None:
        self._space = space
        self._sessions = space.sessions
        self._index = space.index
        self._activity = space.activity
        self._agents = space.agents
        self._state = space.state
        self._namespaces = space.namespaces
        self._state_keys_of = space.state_keys
        self._channels = space.channels

    def _scope(self, tenant: str) -> None:
        self._bind(self._spaces.setdefault(tenant, _Space()))
        self.jobs = self.jobs.scoped(tenant)

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = time.monotonic()
            for tenant, space in list(self._spaces.items()):
                view = self.for_tenant(tenant)
                assert isinstance(view, MemoryStore)
                for sid in [s for s, sess in space.sessions.items() if sess.expires <= now]:
                    view._drop(sid)
            self.jobs.sweep()
            self.limits.sweep(time.strftime("%Y%m%d", time.gmtime()))

    def _indexes(self, sess: _Session | None) -> list[list[tuple[int, str]]]:
        """The indexes a session is in: the sessions', and its agent's."""
        agent = "" if sess is None else sess.meta.get("agent", "")
        if not agent:
            return [self._index]
        return [self._index, self._agents.setdefault(agent, [])]

    def _unindex(self, sess: _Session | None, sid: str, score: int) -> None:
        for index in self._indexes(sess):
            i = bisect.bisect_left(index, (score, sid))
            if i < len(index) and index[i] == (score, sid):
                del index[i]
        if sess is not None and not self._agents.get(sess.meta.get("agent", ""), True):
            del self._agents[sess.meta["agent"]]  # an agent without sessions: no list

    def _drop(self, sid: str) -> None:
        """Forget a session and its index entries."""
        sess = self._sessions.pop(sid, None)
        score = self._activity.pop(sid, None)
        if score is not None:
            self._unindex(sess, sid, score)

    def _touch(self, sid: str) -> None:
        """Note a write to the session: it moves to the head of the listing (its earlier
        entries go stale, see ``_Space.stale``)."""
        old = self._activity.get(sid)
        score = activity_ms()
        if old == score:
            return  # its entries are in place already
        self._activity[sid] = score
        entry = (score, sid)
        _add(self._index, entry)
        sess = self._sessions.get(sid)
        agent = "" if sess is None else sess.meta.get("agent", "")
        if agent:
            _add(self._agents.setdefault(agent, []), entry)
        if old is not None:
            space = self._space
            space.stale += 1
            if space.stale > len(self._activity) + STALE_SLACK:
                self._compact()

    def _compact(self) -> None:
        """Drop the stale entries of the listing's indexes: those whose score is not their
        session's activity any more (or that of a session gone)."""
        activity = self._activity
        self._index[:] = [e for e in self._index if activity.get(e[1]) == e[0]]
        for agent, index in list(self._agents.items()):
            index[:] = [e for e in index if activity.get(e[1]) == e[0]]
            if not index:
                del self._agents[agent]
        self._space.stale = 0

    def _live(self, sid: str) -> _Session | None:
        sess = self._sessions.get(sid)
        if sess is None:
            return None
        now = time.monotonic()
        if sess.expires <= now:
            self._drop(sid)
            return None
        sess.expires = now + self.ttl
        return sess

    # -- sessions and history -------------------------------------------------------

    async def _create(self, sid: str, meta: dict[str, str]) -> bool:
        if self._live(sid) is not None:
            return False
        self._sessions[sid] = _Session(dict(meta), time.monotonic() + self.ttl)
        self._touch(sid)
        return True

    async def _get_meta(self, sid: str) -> dict[str, str] | None:
        sess = self._live(sid)
        return None if sess is None else {**sess.meta, "seq": str(sess.seq)}

    async def _delete(self, sid: str) -> bool:
        if self._live(sid) is None:
            return False
        self._drop(sid)
        self._channels.send(sid, SESSION_DELETED)
        return True

    async def _update_meta(self, sid: str, metadata: str) -> dict[str, str] | None:
        sess = self._live(sid)
        if sess is None:
            return None
        sess.meta["metadata"] = metadata
        return {**sess.meta, "seq": str(sess.seq)}

    async def _list_sessions(
        self, cursor: tuple[int, str] | None, limit: int, agent: str = ""
    ) -> list[IndexRow]:
        if self._space.stale:
            self._compact()
        index = self._agents.get(agent, []) if agent else self._index
        end = len(index) if cursor is None else bisect.bisect_left(index, cursor)
        now = time.monotonic()
        rows: list[IndexRow] = []
        gone: list[str] = []
        for score, sid in reversed(index[max(0, end - limit * 4) : end]):
            sess = self._sessions.get(sid)
            if sess is None or sess.expires <= now:
                gone.append(sid)
                continue
            rows.append((score, sid, {**sess.meta, "seq": str(sess.seq)}))
            if len(rows) == limit:
                break
        for sid in gone:
            self._drop(sid)
        if len(rows) < limit and gone and end > limit * 4:
            # Expired entries filled the window: look further back (they are gone now).
            last = (rows[-1][0], rows[-1][1]) if rows else cursor
            rows += await self._list_sessions(last, limit - len(rows), agent)
        return rows

    async def _delete_message(self, sid: str, seq: int, event: bytes) -> bool | None:
        sess = self._live(sid)
        if sess is None:
            return None
        for i, (row_seq, _) in enumerate(sess.messages):
            if row_seq == seq:
                del sess.messages[i]
                self._channels.send(sid, event)
                return True
        return False

    async def _append(self, sid: str, payloads: list[bytes]) -> int | None:
        sess = self._live(sid)
        if sess is None:
            return None
        return self._append_to(sid, sess, payloads)

    def _append_to(self, sid: str, sess: _Session, payloads: list[bytes]) -> int:
        if not payloads:
            return 0
        first = sess.seq + 1
        stored = []
        if sess.messages is _NO_MESSAGES:
            sess.messages = deque()
        for payload in payloads:
            sess.seq += 1
            # A copy: orjson's output can carry kilobytes of spare capacity, which a
            # history held for days would pay per message.
            sess.messages.append((sess.seq, bytes(memoryview(payload))))
            stored.append(b'{"seq":%d,%s' % (sess.seq, payload[1:]))
        while len(sess.messages) > self.max_messages:
            sess.messages.popleft()
        self._touch(sid)
        self._channels.send(sid, b'{"kind":"messages","messages":[' + b",".join(stored) + b"]}")
        return first

    async def _history(
        self, sid: str, after: int | None, limit: int | None, before: int | None = None
    ) -> list[tuple[int, bytes]] | None:
        sess = self._live(sid)
        if sess is None:
            return None
        if after is None:
            rows = [r for r in sess.messages if before is None or r[0] < before]
            return rows if limit is None else rows[max(0, len(rows) - limit) :] if limit else []
        rows = [row for row in sess.messages if row[0] > after]
        return rows if limit is None else rows[:limit]

    async def _load(
        self, sid: str, last: int
    ) -> tuple[dict[str, str], list[tuple[int, bytes]]] | None:
        sess = self._live(sid)
        if sess is None:
            return None
        rows = _last(sess.messages, last)
        return {**sess.meta, "seq": str(sess.seq)}, rows

    # -- turns ----------------------------------------------------------------------

    async def _begin_turn(
        self, sid: str, last: int, lease_ms: int
    ) -> tuple[int, dict[str, str], list[tuple[int, bytes]]] | None:
        sess = self._live(sid)
        if sess is None:
            return None
        meta = {**sess.meta, "seq": str(sess.seq)}
        if sess.lease_token():
            return 0, meta, []
        sess.fence += 1
        sess.lease = (sess.fence, time.monotonic() + lease_ms / 1000, False)
        rows = _last(sess.messages, last)
        return sess.fence, meta, rows

    async def _renew_turn(self, sid: str, token: int, lease_ms: int) -> int:
        sess = self._live(sid)
        if sess is None:
            return 0
        held = sess.lease_token()
        if held != token and (held or sess.fence != token):
            return 0  # another turn took it (an expired lease nobody took is taken again)
        interrupted = sess.lease is not None and sess.lease[2]
        sess.lease = (token, time.monotonic() + lease_ms / 1000, interrupted)
        return 2 if interrupted else 1

    async def _interrupt_turn(self, sid: str) -> bool:
        sess = self._live(sid)
        if sess is None or not sess.lease_token():
            return False
        assert sess.lease is not None
        sess.lease = (sess.lease[0], sess.lease[1], True)
        return True

    async def _end_turn(self, sid: str, token: int, payloads: list[bytes]) -> int | None:
        sess = self._live(sid)
        if sess is None:
            return None
        if sess.lease_token() != token:
            return -1
        sess.lease = None
        sess.fence += 1  # as in Redis: a late renewal of this token cannot take it again
        return self._append_to(sid, sess, payloads)

    # -- events ---------------------------------------------------------------------

    async def _subscribe(self, sid: str) -> Subscription:
        return self._channels.subscribe(sid)

    async def _publish(self, sid: str, event: bytes) -> None:
        self._channels.send(sid, event)

    # -- shared state ---------------------------------------------------------------

    async def _state_read(self, name: str) -> tuple[bytes, int] | None:
        return self._state.get(name)

    async def _state_write(
        self, name: str, data: bytes, expected: int | None
    ) -> tuple[bool, int, bytes | None]:
        current = self._state.get(name)
        version = 0 if current is None else current[1]
        if expected is not None and expected != version:
            return False, version, None if current is None else current[0]
        self._state[name] = (data, version + 1)
        return True, version + 1, None

    async def _state_index(self, namespace: str, keys: list[str], *, add: bool) -> None:
        names = self._state_keys_of.get(namespace)
        if add:
            if names is None:
                names = self._state_keys_of[namespace] = []
                bisect.insort(self._namespaces, namespace)
            for key in keys:
                at = bisect.bisect_left(names, key)
                if at == len(names) or names[at] != key:
                    names.insert(at, key)
            return
        if names is None:
            return
        for key in keys:
            at = bisect.bisect_left(names, key)
            if at < len(names) and names[at] == key:
                del names[at]
        if not names:
            del self._state_keys_of[namespace]
            del self._namespaces[bisect.bisect_left(self._namespaces, namespace)]

    async def _state_namespaces(self, after: str | None, limit: int) -> list[tuple[str, int]]:
        start = 0 if after is None else bisect.bisect_right(self._namespaces, after)
        return [
            (name, len(self._state_keys_of[name]))
            for name in self._namespaces[start : start + limit]
        ]

    async def _state_keys(
        self, namespace: str, after: str | None, prefix: str, limit: int
    ) -> list[str]:
        names = self._state_keys_of.get(namespace, [])
        start = bisect.bisect_left(names, prefix)
        if after is not None:
            start = max(start, bisect.bisect_right(names, after))
        page = names[start : start + limit]
        return [key for key in page if key.startswith(prefix)]

    async def _state_heads(self, names: list[str]) -> list[tuple[int, int] | None]:
        found = [self._state.get(name) for name in names]
        return [None if doc is None else (doc[1], len(doc[0])) for doc in found]

    async def _state_remove(
        self, name: str, expected: int | None
    ) -> tuple[bool, int, bytes | None]:
        current = self._state.get(name)
        if current is None:
            return False, 0, None
        if expected is not None and expected != current[1]:
            return False, current[1], current[0]
        del self._state[name]
        return True, current[1], None
