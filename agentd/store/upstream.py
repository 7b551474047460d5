"""A session's history window in the form a model call sends it: each stored message
without the store's own fields, decoded once per worker rather than once per turn.

A turn re-reads its session's last messages (``[[agents]] history``, 20 by default)
every time; decoding them and dropping the store's fields cost about a tenth of a
WebSocket turn's CPU, for messages that had not changed since the last turn. The
decoded form is kept here by the stored bytes themselves: equal bytes decode to equal
messages, whichever session, tenant or store they come from, so a hit is exact and
never stale (the in-memory store hands out the same bytes object every time; Redis
replies are compared by content). The cached messages are shared between turns:
read them, never change them.

Bound: at most :data:`CACHE_BYTES` of stored JSON (first in, first out); a message
larger than :data:`LARGEST` is decoded each time and not kept.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import orjson

__all__ = ("CACHE_BYTES", "LARGEST", "STORE_FIELDS", "upstream_form", "upstream_window")

# Fields of a stored message that are the store's, not the model's.
STORE_FIELDS = ("seq", "created_at", "status", "turn", "metadata")
CACHE_BYTES = 4 << 20
LARGEST = 64 << 10

_cache: OrderedDict[bytes, dict[str, Any]] = OrderedDict()
_held = 0  # bytes of stored JSON behind the cached messages


def upstream_form(message: dict[str, Any]) -> dict[str, Any]:
    """A decoded stored message without the store's fields."""
    return {k: v for k, v in message.items() if k not in STORE_FIELDS}


def upstream_window(rows: Iterable[tuple[int, bytes]]) -> list[dict[str, Any]]:
    """The messages of ``rows`` (sequence number, stored JSON), oldest first, in the
    form a model call sends them (shared: read only)."""
    get = _cache.get
    # A stored message is never an empty object: a falsy lookup is a miss.
    return [get(payload) or _decoded(payload) for _, payload in rows]


def _decoded(payload: bytes) -> dict[str, Any]:
    """A message not in the cache, decoded and kept (unless it is too large)."""
    global _held
    message = upstream_form(orjson.loads(payload))
    size = len(payload)
    if size <= LARGEST:
        cache = _cache
        cache[payload] = message
        _held += size
        while _held > CACHE_BYTES:
            _held -= len(cache.popitem(last=False)[0])
    return message
