"""The service registry: every worker of every instance notes itself in the store with a
heartbeat, so an operator (``GET /v1/admin/instances``) sees every live worker from any
of them. The worker's side (what it writes, how often) is ``agentd/server/presence.py``."""

from __future__ import annotations

import abc
from dataclasses import dataclass

__all__ = ("Member", "Registry")


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
