"""All of agentd's state: sessions, history, events and shared state documents.

``open_store(config)`` returns the memory store in standalone mode and the Redis store
(one server, client-side shards, or a Redis Cluster) otherwise; both implement
:class:`~agentd.store.base.Store`.
"""

from __future__ import annotations

from ..config import Config
from .base import Event, SessionInfo, StateConflict, StateDoc, Store, TurnLease

__all__ = (
    "Event",
    "SessionInfo",
    "StateConflict",
    "StateDoc",
    "Store",
    "TurnLease",
    "open_store",
)


def open_store(config: Config) -> Store:
    """The store for ``config``'s mode (not yet started: call ``start()``)."""
    if config.mode == "standalone":
        from .memory import MemoryStore

        return MemoryStore(config)
    from .redis import RedisStore

    return RedisStore(config)
