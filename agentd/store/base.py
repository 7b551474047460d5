"""The base every store implementation extends: the shared logic of each concern
(:mod:`.sessions`, :mod:`.turns`, :mod:`.watch`, :mod:`.state`) over primitives that the
memory (:mod:`.memory`) and Redis (:mod:`.redis`) stores implement atomically."""

from __future__ import annotations

from ..config import Config
from .limits import Limits
from .state import StateStore
from .turns import TurnStore
from .watch import WatchStore

__all__ = ("BaseStore",)


class BaseStore(WatchStore, TurnStore, StateStore):
    """A :class:`~agentd.store.api.Store` once the primitives are implemented."""

    # Rate limits, quotas and usage counters (the contract is agentd.store.limits, kept
    # out of the interfaces module, which imports nothing of the store).
    limits: Limits

    def __init__(self, config: Config) -> None:
        self.config = config
        self.ttl = config.sessions.ttl
        self.max_messages = config.sessions.max_messages
        self.max_message_bytes = config.sessions.max_message_bytes
        self.max_value_bytes = config.state.max_value_bytes

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def readiness(self) -> str | None:
        return None
