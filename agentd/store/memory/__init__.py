"""Standalone mode's store: everything in one process, with the Redis store's semantics."""

from __future__ import annotations

from .store import MemoryStore

__all__ = ("MemoryStore",)
