"""The Redis store: one Redis, client-side shards by hash slot, or a Redis Cluster."""

from __future__ import annotations

from .store import RedisStore

__all__ = ("RedisStore",)
