"""The store's interfaces: what the layers above agentd's state may call, and nothing more.

- :class:`Store`: sessions, their history and events, turn leases, shared state documents;
- :class:`Blobs`: the response cache's shared tier and single-flights (``Store.blobs``);
- :class:`Queue` and :class:`Records`: the job queue and the response records of
  background responses, together as :class:`Jobs` (``Store.jobs``);
- :class:`Keyring`: API key records and the feed of their changes (``Store.keyring``);
- :class:`Subscription`: a feed of a channel (one per watched session per worker);

and the data they exchange. This module imports no implementation: the memory
(:mod:`.memory`) and Redis (:mod:`.redis`) stores implement it and pass the same tests.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import dataclasses
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import Config
from ..errors import Conflict

__all__ = ("DEAD_ID_RE", "DEAD_MAXLEN", "DELETED", "KEY_UPDATABLE", "TERMINAL", "Blobs",
           "DeadLetter", "DeadLetters", "DeadPage", "Delivery", "Entry", "Event", "Jobs",
           "KeyPage", "KeyRecord", "Keyring", "Member", "Queue", "QueueDepth", "Records",
           "Registry", "SessionInfo", "SessionPage", "Start", "StateConflict", "StateDoc",
           "StateEntry", "StateListing", "StateNamespace", "Store", "Subscription", "TurnLease",
           "Watch")  # fmt: skip

# -- sessions, turns, events, shared state ---------------------------------------------


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
class SessionPage:
    """A page of sessions, newest activity first; ``next_after`` continues after it
    (None when this is the last page)."""

    sessions: list[SessionInfo]
    next_after: str | None


class TurnLease(abc.ABC):
    """A session's turn lease: its fencing token, and what the turn read when taking it."""

    __slots__ = ("token",)

    def __init__(self, token: int) -> None:
        self.token = token

    @property
    @abc.abstractmethod
    def session(self) -> SessionInfo:
        """The session's metadata."""

    @property
    @abc.abstractmethod
    def history(self) -> list[dict[str, Any]]:
        """The last messages as stored (with ``seq`` and the store's fields)."""

    @property
    @abc.abstractmethod
    def window(self) -> list[dict[str, Any]]:
        """The last messages in the form a model call sends them: shared, read only."""


@dataclass(frozen=True, slots=True)
class StateDoc:
    value: Any
    version: int


@dataclass(frozen=True, slots=True)
class StateNamespace:
    """A namespace of the tenant's shared state and how many documents it holds."""

    name: str
    documents: int


@dataclass(frozen=True, slots=True)
class StateEntry:
    """A document as a listing shows it: its key, version and size (bytes of JSON)."""

    key: str
    version: int
    size: int


@dataclass(frozen=True, slots=True)
class StateListing:
    """A page of namespaces or documents, in name order; ``next_after`` (None on the last
    page) is the cursor of the next one."""

    data: list[Any]
    next_after: str | None


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
    """One reader's feed of a channel's raw events, queued until read (by one reader).

    An implementation calls :meth:`deliver` for each event and :meth:`reset` when events
    may have been lost; a reader too far behind is reset too, so memory stays bounded.
    An idle feed holds no buffer, and a reader that parks no task on it sets ``on_event``
    to hear that :meth:`get` (or :meth:`drain`) has something. A worker holds one per
    watched session, whatever the number of its watchers (see :mod:`.watch`).
    """

    __slots__ = ("_events", "_overflowed", "_waiter", "on_event")

    def __init__(self) -> None:
        self._events: collections.deque[bytes | None] | None = None  # made when needed
        self._waiter: asyncio.Future[None] | None = None
        self._overflowed = False
        self.on_event: Callable[[], None] | None = None

    def deliver(self, event: bytes) -> None:
        if self._events is not None and len(self._events) >= MAX_BACKLOG:
            self.reset()
            return
        self._put(event)

    def reset(self) -> None:
        if not self._overflowed:
            self._overflowed = True
            self._put(None)

    def _put(self, item: bytes | None) -> None:
        if self._events is None:
            self._events = collections.deque()
        self._events.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        if self.on_event is not None:
            self.on_event()

    @property
    def pending(self) -> bool:
        """Whether :meth:`get` returns without waiting."""
        return bool(self._events)

    async def get(self) -> bytes | None:
        """The next raw event, or None when the feed was interrupted and re-established
        (events may have been missed: the watcher catches up from history)."""
        while not self._events:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        item = self._events.popleft()
        if not self._events:
            self._events = None
        if item is None:
            self._overflowed = False
        return item

    def drain(self) -> list[bytes | None]:
        """Every event queued (as :meth:`get` would give them), for a reader that takes
        them as they come, from ``on_event``, and parks no task."""
        events, self._events = self._events, None
        self._overflowed = False
        return list(events) if events else []

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop receiving."""


class Watch(AsyncGenerator[Event]):
    """A session's events, from :meth:`Store.open_watch`. Besides iterating it, a reader
    can avoid parking a task on it while the session is quiet: :meth:`next_ready` stops
    where iterating would wait for the channel, and ``notify`` calls back when an event
    arrives on it."""

    __slots__ = ()

    @abc.abstractmethod
    async def next_ready(self) -> Event | None:
        """The next event, or None where the next one would be waited for (nothing is
        lost: the event after that is the next one). StopAsyncIteration at the end."""

    @abc.abstractmethod
    def notify(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` each time an event arrives from the channel (None: stop)."""

    @abc.abstractmethod
    def own(self, turn: str) -> None:
        """The messages of ``turn`` reach this reader another way (a connection's own
        turn, as its delta and done frames): they count as read and are never given."""

    @abc.abstractmethod
    def disown(self, turn: str) -> None:
        """Undo :meth:`own` for a turn that stored nothing (no event will name it)."""

    @abc.abstractmethod
    def poll(self) -> tuple[list[Event], bool]:
        """The events that arrived since :meth:`next_ready` stopped, as far as they need
        no waiting (no history to read: no gap, no lost subscription), and whether more
        are pending that only :meth:`next_ready` can give. A reader that is not at that
        stop gets ``([], True)``."""


class Store(abc.ABC):
    """Sessions, their history and events, turn leases, and shared state documents."""

    mode: str = "abstract"
    config: Config
    # The tenant whose objects this store reads and writes ("": the unnamed tenant).
    tenant: str = ""
    # The response cache's shared part (L2, single-flight).
    blobs: Blobs
    # The job queue and response records of background responses.
    jobs: Jobs
    # API key records.
    keyring: Keyring
    # Every live worker of every instance (the service registry).
    registry: Registry

    # -- life cycle ------------------------------------------------------------------

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect (Redis) or prepare; called once per worker before serving."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and stop background tasks."""

    @abc.abstractmethod
    async def readiness(self) -> str | None:
        """``None`` when every part of the store is reachable, else why not."""

    def count_waits(self, observe: Callable[[str], None]) -> None:
        """Have ``observe(outcome)`` called for each durable acknowledgement's wait
        (``redis.wait_replicas``): ``confirmed``, ``timed_out`` or ``refused``. A store
        without replicas has none."""
        return

    def count_replica_reads(self, observe: Callable[[str, str], None]) -> None:
        """Have ``observe(kind, outcome)`` called for each read of a kind in
        ``redis.replica_reads``: ``replica``, ``fallback`` (the replica failed, its
        master answered) or ``master`` (no replica fresh enough). A store without
        replicas has none."""
        return

    @abc.abstractmethod
    def for_tenant(self, tenant: str) -> Store:
        """The same store seen by ``tenant``: its sessions, events, turn leases, shared
        state and response records, and none of any other tenant's (the job queue and
        the cache's shared tier are the same for all). Cheap: a view over the same
        connections, made once per tenant per worker; never started or closed itself."""

    # -- sessions and history --------------------------------------------------------

    @abc.abstractmethod
    async def create_session(
        self,
        session_id: str | None = None,
        *,
        tenant: str | None = None,
        agent: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> SessionInfo:
        """Create a session; a client-chosen id that exists is a ``Conflict``. Its
        ``tenant`` is the store's own unless given."""

    @abc.abstractmethod
    async def get_session(self, session_id: str) -> SessionInfo:
        """The session's metadata (refreshing its TTL); ``NotFound`` if absent."""

    @abc.abstractmethod
    async def delete_session(self, session_id: str) -> None: ...

    @abc.abstractmethod
    async def update_session(self, session_id: str, *, metadata: Mapping[str, Any]) -> SessionInfo:
        """Replace the session's metadata; ``NotFound`` if absent."""

    @abc.abstractmethod
    async def list_sessions(
        self, *, limit: int, after: str | None = None, agent: str | None = None
    ) -> SessionPage:
        """Live sessions (of ``agent`` only, when given: its own index), the most recently
        written to first (created or appended to), ``limit`` at most; ``after`` is a
        previous page's ``next_after``. One round trip per page on one Redis or
        client-side shards (see docs/state.md)."""

    @abc.abstractmethod
    async def delete_message(self, session_id: str, seq: int) -> bool:
        """Delete one message of the history (publishing ``message_deleted``); False when
        there is no such message, ``NotFound`` when no session."""

    @abc.abstractmethod
    async def append(
        self, session_id: str, messages: Sequence[Mapping[str, Any]]
    ) -> list[dict[str, Any]]:
        """Append messages, refresh the TTL and publish one ``messages`` event, atomically.

        Returns the stored messages with their ``seq`` and ``created_at``.
        """

    @abc.abstractmethod
    async def history(
        self,
        session_id: str,
        *,
        limit: int | None = None,
        after: int | None = None,
        before: int | None = None,
    ) -> list[dict[str, Any]]:
        """Messages oldest first: those after ``after`` (a seq), at most ``limit`` of them;
        with no ``after``, the last ``limit`` (of those before ``before``, a seq, if given;
        ``after`` and ``before`` do not go together)."""

    @abc.abstractmethod
    async def load(self, session_id: str, last: int) -> tuple[SessionInfo, list[dict[str, Any]]]:
        """What a turn needs, in one round trip: metadata and the last ``last`` messages."""

    # -- turn leases -----------------------------------------------------------------

    @abc.abstractmethod
    async def begin_turn(self, session_id: str, last: int, lease_s: float) -> TurnLease | None:
        """Take the session's turn lease and read what the turn needs, in one step.

        Returns None while another turn holds the lease; ``NotFound`` if no session.
        """

    @abc.abstractmethod
    async def renew_turn(self, session_id: str, token: int, lease_s: float) -> str:
        """Extend the lease: ``held``, ``interrupted`` (held, but another turn asked it
        to stop) or ``lost`` (expired and maybe taken by another turn)."""

    @abc.abstractmethod
    async def interrupt_turn(self, session_id: str) -> bool:
        """Ask the running turn of the session, if any, to stop (it sees it on renewal)."""

    @abc.abstractmethod
    async def end_turn(
        self, session_id: str, token: int, messages: Sequence[Mapping[str, Any]]
    ) -> list[dict[str, Any]]:
        """Append the turn's messages (none: just let go) and release the lease, in one
        step, only while ``token`` still holds it; else ``Conflict`` ``turn_lost``."""

    # -- events ----------------------------------------------------------------------

    @abc.abstractmethod
    async def publish(self, session_id: str, kind: str, data: Mapping[str, Any]) -> None:
        """Send an event to every watcher of the session, on any instance."""

    @abc.abstractmethod
    def watch(self, session_id: str, after: int | None = None) -> AsyncIterator[Event]:
        """Events of a session, live. With ``after``, first every stored message after
        that seq; ``messages`` events then continue with no gap and no duplicate, also
        across a lost subscription (missed messages are read back from history)."""

    @abc.abstractmethod
    async def open_watch(self, session_id: str, after: int | None = None) -> Watch:
        """Like :meth:`watch`, but subscribed by the time it returns, so that a caller can
        report a failure to subscribe before it starts streaming."""

    # -- shared state ----------------------------------------------------------------

    @abc.abstractmethod
    async def state_get(self, namespace: str, key: str) -> StateDoc: ...

    @abc.abstractmethod
    async def state_put(
        self, namespace: str, key: str, value: Any, *, expected_version: int | None = None
    ) -> StateDoc:
        """Write a document. With ``expected_version`` it is a compare-and-set (0 means
        "must not exist"); a mismatch raises :class:`StateConflict` with the current one."""

    @abc.abstractmethod
    async def state_delete(
        self, namespace: str, key: str, *, expected_version: int | None = None
    ) -> None: ...

    @abc.abstractmethod
    async def state_patch(
        self, namespace: str, key: str, patch: Any, *, expected_version: int | None = None
    ) -> StateDoc:
        """Apply an RFC 7386 merge patch atomically (the document need not exist); with
        ``expected_version``, only to that version (0: absent), else ``StateConflict``."""

    @abc.abstractmethod
    async def state_increment(
        self, namespace: str, key: str, path: Sequence[str], by: int | float
    ) -> StateDoc:
        """Add ``by`` to the number at ``path`` (created as 0, with its parents)."""

    @abc.abstractmethod
    async def list_state_namespaces(self, *, limit: int, after: str | None = None) -> StateListing:
        """The tenant's namespaces holding documents (:class:`StateNamespace`), by name,
        after the namespace ``after``; one round trip per page."""

    @abc.abstractmethod
    async def list_state_documents(
        self, namespace: str, *, limit: int, after: str | None = None, prefix: str = ""
    ) -> StateListing:
        """The namespace's documents (:class:`StateEntry`) whose key starts with
        ``prefix``, by key, after the key ``after`` (see docs/state.md)."""


# -- the response cache's shared tier ---------------------------------------------------

# A single-flight stream entry: (id, fields).
Entry = tuple[bytes, dict[bytes, bytes]]


class Blobs(abc.ABC):
    """What the response cache shares between processes."""

    shared: bool = True

    @abc.abstractmethod
    async def get(self, hexkey: str) -> bytes | None: ...

    @abc.abstractmethod
    async def put(self, hexkey: str, data: bytes, ttl_s: float) -> None: ...

    @abc.abstractmethod
    async def clear(self) -> int:
        """Delete every entry, bump the epoch and tell every worker; return how many."""

    @abc.abstractmethod
    async def epoch(self) -> int: ...

    @abc.abstractmethod
    async def invalidations(self) -> Subscription | None:
        """A feed of cache clears (None where there is one worker only)."""

    @abc.abstractmethod
    async def lead(self, hexkey: str, owner: str, ttl_s: float) -> bool:
        """Become the key's single-flight leader unless a live one exists."""

    @abc.abstractmethod
    async def renew(self, hexkey: str, owner: str, ttl_s: float) -> bool:
        """Extend the leader's lock and its stream by ``ttl_s``; False when the lock is
        no longer ``owner``'s."""

    @abc.abstractmethod
    async def release(self, hexkey: str, owner: str, ttl_s: float) -> None:
        """Drop the lock if it is still ``owner``'s, and in the same step append a
        ``gone`` entry to the flight's stream (kept ``ttl_s``): a follower learns at once
        that the flight ended, whether or not a reply came before it."""

    @abc.abstractmethod
    async def emit(self, hexkey: str, fields: dict[str, bytes], ttl_s: float) -> None:
        """Append to the flight's stream (read by followers in other processes)."""

    @abc.abstractmethod
    async def tail(self, hexkey: str, after: bytes, block_s: float) -> list[Entry]:
        """Flight stream entries after ``after`` (``b"0"``: from the start), waiting up
        to ``block_s`` for the first one."""


# -- the job queue ----------------------------------------------------------------------


# Dead letters kept per partition (older ones are trimmed).
DEAD_MAXLEN = 10_000


@dataclass(frozen=True, slots=True)
class Delivery:
    """One delivery of a job to this consumer."""

    partition: str
    shard: int
    entry: str  # the queue entry's id
    job_id: str
    enqueued_at: float  # unix seconds


@dataclass(frozen=True, slots=True)
class QueueDepth:
    waiting: int
    running: int
    oldest_s: float  # age of the oldest waiting job, 0 when none waits
    dead: int
    retries: int = 0  # failed attempts put back on the queue, ever


class Queue(abc.ABC):
    """Each partition's jobs, spread over ``queue_shards`` streams, delivered at least once.

    A job is delivered to one consumer and stays pending until acknowledged; a consumer
    keeps it by renewing it, and a job not renewed for the lease is reclaimed by another.
    """

    @abc.abstractmethod
    async def enqueue(self, partition: str, shard: int, job_id: str, limit: int) -> bool:
        """Queue a job on one of the partition's streams; False when that stream
        already holds ``limit`` jobs."""

    @abc.abstractmethod
    async def take(
        self, partition: str, shard: int, consumer: str, count: int, block_s: float
    ) -> list[Delivery]:
        """New jobs for ``consumer``, waiting up to ``block_s`` for the first one."""

    @abc.abstractmethod
    async def reclaim(
        self, partition: str, shard: int, consumer: str, idle_s: float, count: int
    ) -> list[Delivery]:
        """Jobs whose holder has not renewed them for ``idle_s``, now ``consumer``'s."""

    @abc.abstractmethod
    async def renew(self, delivery: Delivery, consumer: str) -> bool:
        """Keep holding a job; False when another consumer took it over."""

    @abc.abstractmethod
    async def ack(self, delivery: Delivery) -> None:
        """Done with the job: it leaves the queue."""

    @abc.abstractmethod
    async def retry(self, delivery: Delivery, *, failed: bool = False) -> None:
        """Put the job back at the end of its stream (a new delivery) and ack this one;
        ``failed``: after a failed attempt (counted in :attr:`QueueDepth.retries`)."""

    @abc.abstractmethod
    async def bury(self, delivery: Delivery, reason: bytes, attempts: int = 0) -> None:
        """Move the job to the partition's dead-letter stream (with why and after how
        many attempts) and ack it."""

    @abc.abstractmethod
    async def depth(self, partition: str, shards: int) -> QueueDepth: ...


# -- response records -------------------------------------------------------------------

TERMINAL = frozenset({"completed", "failed", "cancelled", "incomplete"})
# What a record's feed carries when the record is deleted (watchers stop).
DELETED = b"deleted"


@dataclass(frozen=True, slots=True)
class Start:
    """What :meth:`Records.start` found: ``run`` (attempt ``attempt`` is yours), ``cancel``
    (asked before it ran), ``exhausted`` (out of attempts), ``done`` (already ended:
    ``status``), ``gone`` (no such record)."""

    verdict: str
    attempt: int = 0
    seq: int = 0
    status: str = ""
    record: dict[str, bytes] = field(default_factory=dict)  # as it was when started


class Records(abc.ABC):
    """A background response's state and numbered events.

    Every write made while running is fenced by the attempt number :meth:`start` hands
    out, so a holder that wakes up after its job was reclaimed cannot overwrite the newer
    attempt's events or result.
    """

    @abc.abstractmethod
    async def create(
        self,
        rid: str,
        fields: Mapping[str, bytes],
        ttl_s: int,
        events: Sequence[tuple[int, bytes]] = (),
    ) -> None:
        """Store a new record with its first events (sequence numbers from 0)."""

    @abc.abstractmethod
    async def read(self, rid: str) -> dict[str, bytes] | None: ...

    @abc.abstractmethod
    async def start(self, rid: str, max_attempts: int, consumer: str) -> Start:
        """Begin the job's next attempt (see :class:`Start`); the record notes which
        consumer runs it (``by``)."""

    @abc.abstractmethod
    async def update(self, rid: str, attempt: int, fields: Mapping[str, bytes]) -> bool:
        """Set fields while ``attempt`` is the record's latest; False otherwise."""

    @abc.abstractmethod
    async def emit(self, rid: str, attempt: int, events: Sequence[tuple[int, bytes]]) -> bool:
        """Append (sequence number, event JSON) pairs and publish them, fenced by attempt."""

    @abc.abstractmethod
    async def finish(
        self,
        rid: str,
        attempt: int,
        fields: Mapping[str, bytes],
        events: Sequence[tuple[int, bytes]],
    ) -> bool:
        """Set the final fields and emit the closing events in one step, fenced by
        attempt; False when fenced out or the record already ended."""

    @abc.abstractmethod
    async def cancel_asked(self, rid: str) -> bool:
        """Whether the response was asked to stop (or is gone): a cheap check."""

    @abc.abstractmethod
    async def cancel(self, rid: str) -> str | None:
        """Ask the job to stop (or never start); the record's status, None if absent."""

    @abc.abstractmethod
    async def delete(self, rid: str) -> bool: ...

    @abc.abstractmethod
    async def events(self, rid: str, after: int) -> list[bytes]:
        """Stored events with a sequence number above ``after`` (-1: all)."""

    @abc.abstractmethod
    async def subscribe(self, rid: str) -> Subscription:
        """Live events of the record (raw event JSON; :data:`DELETED` when deleted)."""

    @abc.abstractmethod
    async def record_step(self, rid: str, attempt: int, index: int, step: bytes) -> bool:
        """Record step ``index`` (from 0) of the response's tool loop, fenced by attempt
        (False when fenced out). Only the next step is appended: one written before is
        kept as it is, and one after a missing step is left out. The steps expire with
        the record and are dropped when it ends or is deleted."""

    @abc.abstractmethod
    async def steps(self, rid: str) -> list[bytes]:
        """The steps recorded by :meth:`record_step`, in order (none: empty)."""


# -- dead letters, as operators handle them (agentd/server/jobs_admin.py) -----------------

# A dead letter's id: its stream entry id (ms-sequence), in Redis and in memory alike.
DEAD_ID_RE = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str  # the dead-letter stream entry's id
    partition: str
    job_id: str  # the queued job's id (keys.job_id: tenant and response id)
    error: bytes  # the last attempt's error, JSON
    attempts: int  # attempts made (0: buried before this was noted)

    @property
    def failed_at(self) -> float:
        """When it was buried (unix seconds): the entry id's time."""
        return int(self.id.split("-", 1)[0]) / 1000


@dataclass(frozen=True, slots=True)
class DeadPage:
    """A page of dead letters, newest first; ``next_after`` continues after it (None:
    the last page)."""

    letters: list[DeadLetter]
    next_after: str | None


class DeadLetters(abc.ABC):
    """What an operator does with dead letters, and with the record of a retried one."""

    @abc.abstractmethod
    async def dead_letters(self, partition: str, *, limit: int, after: str | None) -> DeadPage:
        """The partition's dead letters, newest first, those older than ``after`` (an id)."""

    @abc.abstractmethod
    async def take_dead(self, partition: str, entry: str) -> DeadLetter | None:
        """Remove one dead letter and return it (None if there is none: of two callers
        at once, one only gets it)."""

    @abc.abstractmethod
    async def put_dead(self, partition: str, job_id: str, error: bytes, attempts: int) -> str:
        """Add a dead letter (a buried job, or one a failed retry puts back); its id."""

    @abc.abstractmethod
    async def requeue(self, rid: str) -> str | None:
        """Put a ``failed`` response back to ``queued`` for a new round of
        ``[jobs] max_attempts`` attempts (its attempt fence goes on growing); returns the
        status it had (only ``failed`` is changed), None when there is no record."""

    @abc.abstractmethod
    async def unqueue(self, rid: str) -> bool:
        """Undo :meth:`requeue` when its job could not be queued (unless an attempt
        began meanwhile): the response is ``failed`` again with its error."""


class Jobs(Queue, Records, DeadLetters, abc.ABC):
    """The queue and the records, as the job runner and the Responses API use them,
    and the dead letters as operators handle them."""


# -- API keys ----------------------------------------------------------------------------

# The fields of a key record that may change after creation (never its tenant or hash).
KEY_UPDATABLE = frozenset({"name", "scopes", "agents", "limits", "disabled", "expires_at"})


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


class Keyring(abc.ABC):
    """API key records, their per-tenant index, and a feed of which ones changed."""

    @abc.abstractmethod
    async def create(self, record: KeyRecord) -> bool:
        """Store a new record; False (nothing written) if its id is taken."""

    @abc.abstractmethod
    async def get(self, key_id: str, *, replica: bool = False) -> KeyRecord | None:
        """The record; ``replica``: a refresh of a record the caller holds, which may be
        read from a replica (``redis.replica_reads``), so up to ``redis.replica_max_lag``
        behind (a change's notification makes the caller forget it and read the master)."""

    @abc.abstractmethod
    async def list(self, tenant: str | None, *, limit: int, after: str | None = None) -> KeyPage:
        """A tenant's keys (``None``: every tenant's), in id order, after ``after``."""

    @abc.abstractmethod
    async def update(self, key_id: str, changes: Mapping[str, Any]) -> KeyRecord | None:
        """Change ``changes`` (names in :data:`KEY_UPDATABLE`) of an existing record at once;
        the new record, or None if there is none."""

    @abc.abstractmethod
    async def delete(self, key_id: str) -> KeyRecord | None:
        """Revoke: remove the record; the removed record, or None if there was none."""

    @abc.abstractmethod
    async def changes(self) -> Subscription:
        """A feed of the ids (bytes) of keys created, updated or revoked by any worker of
        any instance; ``None`` on it when changes may have been missed."""


# -- the service registry: every live worker of every instance (agentd/server/presence.py)


@dataclass(frozen=True, slots=True)
class Member:
    """One live worker: its id (``INSTANCE/WORKER``), when it last beat (unix seconds, on
    the store's clock) and the entry it wrote (JSON)."""

    id: str
    last_seen: float
    entry: bytes


class Registry(abc.ABC):
    @abc.abstractmethod
    async def beat(self, worker_id: str, entry: bytes, ttl_s: float) -> float:
        """Note the worker as alive with ``entry`` (one round trip); workers not seen for
        ``ttl_s`` are dropped on the way. Returns the store's time (unix seconds)."""

    @abc.abstractmethod
    async def leave(self, worker_id: str) -> None:
        """Remove the worker's entry (it is draining)."""

    @abc.abstractmethod
    async def members(self, ttl_s: float) -> list[Member]:
        """The workers seen within ``ttl_s``, in id order (one round trip)."""
