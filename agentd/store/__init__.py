"""All of agentd's state: sessions, history, events, shared state documents, the
response cache's shared tier, the job queue, the response records and API key records.

``open_store(config)`` returns the memory store in standalone mode and the Redis store
(one server, client-side shards, or a Redis Cluster) otherwise; both implement
:class:`~agentd.store.api.Store`. The layers above import the store from here only.
"""

from __future__ import annotations

from ..config import Config
from .api import (
    DEAD_ID_RE,
    DELETED,
    KEY_UPDATABLE,
    TERMINAL,
    Blobs,
    DeadLetter,
    DeadPage,
    Delivery,
    Event,
    Jobs,
    KeyPage,
    KeyRecord,
    Keyring,
    Queue,
    QueueDepth,
    Records,
    SessionInfo,
    SessionPage,
    Start,
    StateConflict,
    StateDoc,
    StateEntry,
    StateListing,
    StateNamespace,
    Store,
    Subscription,
    TurnLease,
    Watch,
)
from .codec import no_session
from .keys import job_id, job_of
from .limits import (
    DAY,
    LEASE_MS,
    MONTH,
    USAGE_FIELDS,
    Ask,
    Batch,
    Charge,
    Grant,
    LeaseAsk,
    Limits,
    Rule,
    Verdict,
    Window,
    usage_of,
)

__all__ = (
    "DAY",
    "DEAD_ID_RE",
    "DELETED",
    "KEY_UPDATABLE",
    "LEASE_MS",
    "MONTH",
    "TERMINAL",
    "USAGE_FIELDS",
    "Ask",
    "Batch",
    "Blobs",
    "Charge",
    "DeadLetter",
    "DeadPage",
    "Delivery",
    "Event",
    "Grant",
    "Jobs",
    "KeyPage",
    "KeyRecord",
    "Keyring",
    "LeaseAsk",
    "Limits",
    "Queue",
    "QueueDepth",
    "Records",
    "Rule",
    "SessionInfo",
    "SessionPage",
    "Start",
    "StateConflict",
    "StateDoc",
    "StateEntry",
    "StateListing",
    "StateNamespace",
    "Store",
    "Subscription",
    "TurnLease",
    "Verdict",
    "Watch",
    "Window",
    "job_id",
    "job_of",
    "no_session",
    "open_store",
    "preload",
    "usage_of",
)


def open_store(config: Config) -> Store:
    """The store for ``config``'s mode (not yet started: call ``start()``)."""
    if config.mode == "standalone":
        from .memory import MemoryStore

        return MemoryStore(config)
    from .redis import RedisStore

    return RedisStore(config)


def preload(config: Config) -> None:
    """Import the implementation ``config``'s mode uses, without opening anything: the
    supervisor does it before forking, so that its workers share the modules (the
    Redis client's take a worker most of its own start-up time to import)."""
    if config.mode == "standalone":
        from . import memory  # noqa: F401
    else:
        from . import redis  # noqa: F401
